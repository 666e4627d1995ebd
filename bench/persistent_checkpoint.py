"""PersistentCheckpoint create and restore of a gVisor pod through the Helm-installed
product on the e2e node (root).

    python bench/persistent_checkpoint.py [--ballast-mib 64 256] [--keep]

Installs the chart unless it is there. For each BALLAST_MIB (random memory the
counter app holds), in one run:
- cold start: a runsc-architect pod (managed-pod) applied -> its first answer;
- create: PersistentCheckpoint applied -> Ready (the daemon's `runsc checkpoint
  --leave-running`), and the image's size;
- restore: a new pod naming it applied -> its first answer, which must continue
  the counter (else the row says so).
Each time is also given as a ratio of that size's cold start.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import product

START_FROM = "architect.loopholelabs.io/start-from-persistent-checkpoint"


def gvisor_pod(name: str, ballast_mib: int, node: str = "") -> dict[str, Any]:
    tmpl = product.counter_deployment(name, ballast_mib=ballast_mib)["spec"]["template"]
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(tmpl)}
    pod["metadata"]["name"] = name
    pod["metadata"]["annotations"] = {"architect.loopholelabs.io/managed-pod": "true"}
    pod["spec"]["runtimeClassName"] = "runsc-architect"
    pod["spec"]["terminationGracePeriodSeconds"] = 0
    pod["spec"]["containers"][0]["name"] = "app"  # same name in every pod: runsc matches by it
    pod["spec"]["containers"][0]["resources"] = {}
    if node:
        pod["spec"]["nodeName"] = node  # the image is node-local
    return pod


def first_answer(kube: product.Kube, ns: str, pod: dict[str, Any]) -> tuple[float, int]:
    t0 = time.monotonic()
    kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps(pod))
    ready = product.ready_pod(kube, ns, pod["metadata"]["labels"]["app"])
    ip = ready["status"]["podIP"]
    product.wait_listening(ip, timeout_s=120)
    body, _ = product.http_get(ip)
    return time.monotonic() - t0, product.count_of(body)


def one(kube: product.Kube, ns: str, mib: int) -> dict[str, Any]:
    src = gvisor_pod(f"src-{mib}", mib)
    cold, _ = first_answer(kube, ns, src)
    ip = kube.json("pod", "-n", ns, f"src-{mib}")["status"]["podIP"]
    n, _ = product.http_get(ip)
    node = kube.json("pod", "-n", ns, f"src-{mib}")["spec"]["nodeName"]
    pc = {"apiVersion": "architect.loopholelabs.io/v1alpha1", "kind": "PersistentCheckpoint",
          "metadata": {"name": f"snap-{mib}"},
          "spec": {"sourcePod": f"src-{mib}", "storage": {"nodeLocal": True}}}
    t0 = time.monotonic()
    kube.run("apply", "-n", ns, "-f", "-", stdin=json.dumps(pc))
    status: dict[str, Any] = {}

    def done() -> bool:
        status.update(kube.json("pckpt", "-n", ns, f"snap-{mib}").get("status") or {})
        return status.get("phase") in ("Ready", "Failed")

    product.eventually("PersistentCheckpoint done", done, 300, 0.1)
    create = time.monotonic() - t0
    if status["phase"] != "Ready":
        raise product.ProductError(f"snap-{mib}: {status.get('message')}")
    dst = gvisor_pod(f"dst-{mib}", mib, node)
    dst["metadata"]["annotations"][START_FROM] = f"snap-{mib}"
    restore, got = first_answer(kube, ns, dst)
    return {"mib": mib, "cold": cold, "create": create, "restore": restore,
            "size": status["image"]["sizeBytes"], "continued": got == product.count_of(n) + 1}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ballast-mib", type=int, nargs="+", default=[64, 256])
    p.add_argument("--keep", action="store_true", help="leave the chart installed")
    a = p.parse_args()
    kube = product.Kube()
    installed_here = kube.run("get", "namespace", product.NAMESPACE, check=False).returncode != 0
    if installed_here:
        print(f"install: {product.install(kube):.1f}s")
    ns = "architect-bench-pckpt"
    kube.run("create", "namespace", ns, check=False)
    try:
        print(f"{'RSS':>8} {'cold':>7} {'create':>7} {'(x cold)':>8} {'restore':>8} "
              f"{'(x cold)':>8} {'image':>9}  state")
        for mib in a.ballast_mib:
            r = one(kube, ns, mib)
            print(f"{r['mib']:>5}MiB {r['cold']:>6.2f}s {r['create']:>6.2f}s "
                  f"{r['create'] / r['cold']:>7.2f}x {r['restore']:>7.2f}s "
                  f"{r['restore'] / r['cold']:>7.2f}x {r['size'] / 2**20:>6.1f}MiB  "
                  f"{'continued' if r['continued'] else 'LOST (started fresh)'}")
    finally:
        kube.run("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False,
                 timeout=180)
        if installed_here and not a.keep:
            product.uninstall(kube)
    return 0


if __name__ == "__main__":
    sys.exit(main())
