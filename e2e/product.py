"""Architect as a user installs it, on the e2e cluster: one code path for the
product tests (e2e/tests/cluster/test_product.py), the kuttl product suite and the
demo (``python -m e2e.product demo``).

    python -m e2e.product install     # image built + imported, `helm upgrade --install`
    python -m e2e.product uninstall   # helm uninstall + the node setup removed
    python -m e2e.product demo        # install, deploy the seed's app, hibernate, wake

Nothing here starts an Architect component by hand: `helm install` runs the
operator (webhooks, control plane) and the daemon DaemonSet, whose init container
(`architect node install`) puts the shim on the node and restarts containerd
through e2e/cluster/up, the e2e node's way to restart it. The only host-side step
is the teardown's removal of what that init container wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "architect"
E2E_VALUES = REPO / "tests" / "charts" / "values" / "e2e-node.yaml"
UP = REPO / "e2e" / "cluster" / "up"
CACHE = Path(os.environ.get("ARCHITECT_CACHE", "/var/cache/architect"))
HELM = CACHE / "bin" / "helm"
KUBECTL = CACHE / "bin" / "kubectl"
CONTAINERD = Path("/run/architect-e2e/containerd/containerd.sock")
NODEB_CONTAINERD = Path("/run/architect-e2e/node-b/containerd/containerd.sock")
KUBECONFIG = Path("/var/lib/architect-e2e/kubeconfig")
CONTEXT = "architect-e2e"
RELEASE = "architect"
NAMESPACE = "architect-system"
# Where the e2e values put the node setup (tests/charts/values/e2e-node.yaml).
NODE_PREFIX = Path("/var/lib/architect-e2e/architect")
NODE_DROPINS = Path("/etc/architect-e2e/containerd-runtimes.d")
NODE_CONFIG = Path("/var/lib/architect-e2e/architect-config")
STATUS = "architect.loopholelabs.io/status"
INSTALL_TIMEOUT_S = 420
HELM_ENV = {
    "HELM_CONFIG_HOME": "/tmp/architect-helm/config",
    "HELM_CACHE_HOME": "/tmp/architect-helm/cache",
    "HELM_DATA_HOME": "/tmp/architect-helm/data",
}

# The seed's app: an HTTP server whose answer is a counter kept only in memory.
# A fresh start counts from 1 again, so a continuing count proves a restore.
# The cluster tests run it too; `count_of` reads the count from its answer.
COUNTER = """
import http.server as h, os, time
ballast = os.urandom(int(os.environ.get("BALLAST_MIB", "0")) << 20)  # RSS to carry
n = [0]
started = time.time()
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        n[0] += 1
        b = f"{n[0]} pid={os.getpid()} started={started:.3f}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
h.HTTPServer(("", 8080), H).serve_forever()
"""


class ProductError(Exception):
    """A step of the product flow failed; the message says which and why."""


@dataclass(frozen=True)
class Kube:
    kubeconfig: Path = KUBECONFIG
    context: str = CONTEXT
    kubectl: Path = KUBECTL

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.kubectl), "--kubeconfig", str(self.kubeconfig),
               "--context", self.context, *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise ProductError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run("get", *args, "-o", "json").stdout)


def eventually(what: str, probe: Callable[[], bool], timeout_s: float,
               every_s: float = 0.25) -> float:
    """Poll ``probe`` until true (bounded); returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if probe():
            return time.monotonic() - start
        time.sleep(every_s)
    raise ProductError(f"timed out after {timeout_s:.0f}s: {what}")


def helm(kube: Kube, *args: str, timeout: float = INSTALL_TIMEOUT_S + 60) -> str:
    proc = subprocess.run(
        [str(HELM), "--kubeconfig", str(kube.kubeconfig), "--kube-context", kube.context, *args],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **HELM_ENV},
    )
    if proc.returncode != 0:
        raise ProductError(f"helm {args[0]}: {proc.stderr.strip()[-3000:]}")
    return proc.stdout


def image_tag() -> str:
    """The architect image for this source tree, built (cached) and imported."""
    from e2e.images import architect as image

    built = image.ensure(CACHE / "images")
    image.import_image(built, CONTAINERD)
    if NODEB_CONTAINERD.exists():  # node B of `e2e/cluster/up --nodes 2`: its own store
        image.import_image(built, NODEB_CONTAINERD)
    return built.ref.rsplit(":", 1)[1]


def helm_values(tag: str, extra: Sequence[str] = ()) -> list[str]:
    return [
        "--values", str(E2E_VALUES),
        "--set", f"image.tag={tag}",
        # As a user installs it: the chart owns the RuntimeClasses.
        "--set", "runtimeClasses.create=true",
        # The e2e node's containerd is restarted by its own harness script.
        "--set-json", f"node.restartCommand={json.dumps([str(UP)])}",
        *extra,
    ]


def install(kube: Kube, extra: Sequence[str] = (), release: str = RELEASE,
            namespace: str = NAMESPACE) -> float:
    """`helm upgrade --install` and wait until the daemon runs on the node and
    containerd knows the handlers; returns the seconds it took."""
    start = time.monotonic()
    tag = image_tag()
    _release_runtime_classes(kube)
    helm(kube, "upgrade", "--install", release, str(CHART), "--namespace", namespace,
         "--create-namespace", *helm_values(tag, extra), "--wait",
         "--timeout", f"{INSTALL_TIMEOUT_S}s")
    kube.run("-n", namespace, "rollout", "status", "daemonset",
             "-l", "app.kubernetes.io/component=daemon", f"--timeout={INSTALL_TIMEOUT_S}s",
             timeout=INSTALL_TIMEOUT_S + 30, check=False)
    eventually("the daemon pod Ready", lambda: _daemon_ready(kube, namespace), 300, 1)
    return time.monotonic() - start


def _release_runtime_classes(kube: Kube) -> None:
    """RuntimeClasses other e2e tests applied with kubectl would make helm refuse
    to install its own: delete those (no pod uses them between tests)."""
    from architect.policy.annotations import RUNTIME_CLASSES

    for rc in RUNTIME_CLASSES:
        proc = kube.run("get", "runtimeclass", rc, "-o", "json", check=False)
        if proc.returncode != 0:
            continue
        labels = json.loads(proc.stdout)["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/managed-by") != "Helm":
            kube.run("delete", "runtimeclass", rc, "--ignore-not-found")


def _daemon_ready(kube: Kube, namespace: str) -> bool:
    pods = kube.json("pods", "-n", namespace, "-l", "app.kubernetes.io/component=daemon")
    for p in pods["items"]:
        for c in p.get("status", {}).get("conditions", []):
            if c["type"] == "Ready" and c["status"] == "True":
                return True
    return False


def uninstall(kube: Kube, release: str = RELEASE, namespace: str = NAMESPACE) -> None:
    """helm uninstall, then what the init container wrote on the node (a user
    would run `architect node uninstall` there), and containerd restarted."""
    helm(kube, "uninstall", release, "--namespace", namespace, "--ignore-not-found",
         "--wait", "--timeout", "120s", timeout=180)
    kube.run("delete", "namespace", namespace, f"{namespace}-trust", "--ignore-not-found",
             "--wait=false", check=False)
    subprocess.run([sys.executable, "-m", "architect.runtime.shim.nodeinstall", "uninstall",
                    "--prefix", str(NODE_PREFIX), "--containerd-config-dir", str(NODE_DROPINS),
                    "--config-dir", str(NODE_CONFIG), "--link-dir", "/usr/local/bin"],
                   check=True, capture_output=True, timeout=120, cwd=REPO)
    subprocess.run([str(UP)], check=True, capture_output=True, timeout=600)


def keep_logs(kube: Kube, dest: Path, namespace: str = NAMESPACE) -> None:
    """Every container log of the release's pods (operator, daemons) into
    ``dest`` as <node>.<pod>.<container>.log, before an uninstall takes them."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in kube.json("pods", "-n", namespace)["items"]:
        name, node = p["metadata"]["name"], p["spec"].get("nodeName", "")
        for c in p["spec"]["containers"]:
            out = kube.run("logs", "-n", namespace, name, "-c", c["name"], check=False)
            (dest / f"{node}.{name}.{c['name']}.log").write_text(out.stdout + out.stderr)


# --- the seed's app ---------------------------------------------------------


def counter_deployment(name: str = "my-app", scaledown: str = "30s", mode: str = "packets",
                       replicas: int = 1, extra: dict[str, str] | None = None,
                       ballast_mib: int = 0) -> dict[str, Any]:
    """The seed's Deployment (samples/deployment.yaml) with network-monitor, running
    the counter app from the e2e node's local python image."""
    c = f"{name}-container"
    annotations = {
        "architect.loopholelabs.io/managed-containers": json.dumps([c]),
        "architect.loopholelabs.io/scaledown-durations": json.dumps({c: scaledown}),
        "architect.loopholelabs.io/network-monitor": json.dumps({c: mode}),
        **(extra or {}),
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {
                    "runtimeClassName": "runc-architect",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": c, "image": "architect.local/python:3.11",
                        "imagePullPolicy": "Never", "command": ["python3", "-c", COUNTER],
                        "env": [{"name": "BALLAST_MIB", "value": str(ballast_mib)}],
                        "ports": [{"containerPort": 8080}],
                        "resources": {"requests": {"memory": "512Mi", "cpu": "250m"}},
                    }],
                },
            },
        },
    }


def live_pod(kube: Kube, ns: str, app: str) -> dict[str, Any] | None:
    for p in kube.json("pods", "-n", ns, "-l", f"app={app}")["items"]:
        if not p["metadata"].get("deletionTimestamp"):
            return dict(p)
    return None


def ready_pod(kube: Kube, ns: str, app: str, timeout_s: float = 180) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        p = live_pod(kube, ns, app)
        conds = {c["type"]: c["status"] for c in (p or {}).get("status", {}).get("conditions", [])}
        if p and conds.get("Ready") == "True" and p["status"].get("podIP"):
            found[:] = [p]
            return True
        return False

    try:
        eventually(f"a Ready pod app={app} in {ns}", ready, timeout_s, 0.5)
    except ProductError:
        events = kube.run("get", "events", "-n", ns, check=False).stdout
        raise ProductError(f"no Ready pod app={app} in {ns}; events:\n{events[-3000:]}") from None
    return found[0]


def status_of(kube: Kube, ns: str, pod: str) -> dict[str, str]:
    obj = kube.json("pod", "-n", ns, pod)
    raw = (obj["metadata"].get("annotations") or {}).get(STATUS)
    out: dict[str, str] = json.loads(raw) if raw else {}
    return out


def wait_listening(ip: str, port: int = 8080, timeout_s: float = 60) -> None:
    """Bare connects count nothing as activity (no payload)."""
    def accepts() -> bool:
        try:
            with socket.create_connection((ip, port), timeout=2):
                return True
        except OSError:
            return False

    eventually(f"{ip}:{port} accepts connections", accepts, timeout_s)


def http_get(ip: str, port: int = 8080, timeout_s: float = 60) -> tuple[str, float]:
    """One GET; returns the body and the seconds from connect to the answer."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=timeout_s) as r:
            body = r.read().decode()
    except (urllib.error.URLError, OSError) as e:
        raise ProductError(f"GET http://{ip}:{port}/ failed: {e}") from None
    return body, time.monotonic() - start


def count_of(body: str) -> int:
    return int(body.split()[0])


# --- the demo ---------------------------------------------------------------


def demo(scaledown: str = "10s") -> int:
    """Install, deploy the seed's app, watch it hibernate, wake it with a request."""
    kube = Kube()
    say = print
    ns = "architect-demo"
    say(f"1/5 helm install {CHART.relative_to(REPO)} (operator, webhooks, daemon + node setup)")
    took = install(kube)
    say(f"    installed and the daemon Ready in {took:.1f}s")
    kube.run("create", "namespace", ns, check=False)
    dep = counter_deployment("my-app", scaledown=scaledown)
    kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps(dep))
    t0 = time.monotonic()
    pod = ready_pod(kube, ns, "my-app")
    ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
    wait_listening(ip)
    cold = time.monotonic() - t0
    say(f"2/5 pod {name} ({ip}) Ready and listening {cold:.1f}s after apply (cold start)")
    body, _ = http_get(ip)
    say(f"    curl http://{ip}:8080/ -> {body!r}")
    say(f"3/5 waiting for {scaledown} of idleness ...")
    eventually("SCALED_DOWN", lambda: "SCALED_DOWN" in status_of(kube, ns, name).values(),
               180, 0.5)
    def requests() -> dict[str, str]:
        spec = kube.json("pod", "-n", ns, name)["spec"]["containers"][0]
        return dict(spec["resources"].get("requests") or {})

    asked = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    # The resize follows the checkpoint by a tick or two.
    with contextlib.suppress(ProductError):  # printed as they are: resize=false keeps them
        eventually("requests given back", lambda: requests() != asked, 30, 0.5)
    say(f"    status {status_of(kube, ns, name)}; requests {asked} -> {requests()}")
    body2, wake = http_get(ip)
    say(f"4/5 curl http://{ip}:8080/ -> {body2!r}: woke in {wake * 1000:.0f} ms "
        f"(cold start {cold:.1f}s: {wake / cold:.2f}x), counter "
        f"{'continued' if count_of(body2) == count_of(body) + 1 else 'RESET'}")
    say(f"    status {status_of(kube, ns, name)}")
    say("5/5 tear down: kubectl delete namespace architect-demo; "
        "python3 -m e2e.product uninstall; sudo e2e/cluster/down")
    return 0 if count_of(body2) == count_of(body) + 1 else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.product", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("install", "uninstall", "demo"))
    p.add_argument("--scaledown", default="10s", help="the demo app's idle time before hibernation")
    p.add_argument("helm_args", nargs=argparse.REMAINDER,
                   help="install: more helm arguments, e.g. --set operator.consumedTTL=10s")
    a = p.parse_args(argv)
    try:
        if a.action == "install":
            print(f"installed in {install(Kube(), extra=a.helm_args):.1f}s")
        elif a.action == "uninstall":
            uninstall(Kube())
        else:
            return demo(a.scaledown)
    except (ProductError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"e2e.product {a.action}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
