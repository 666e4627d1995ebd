"""Two real nodes on this machine (`e2e/cluster/up --nodes 2`): node B is a second
kubelet + containerd in mount and network namespaces of its own, registered with
the same API server. Pods on both nodes reach each other, and `down --node-b`
leaves nothing of node B. The module removes node B when it ends, so the
single-node suites that follow see the cluster they expect.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.pytest_cluster import UP, Cluster
from e2e.tests.cluster.kube import (
    eventually,
    get_json,
    kubectl,
    namespace,
)

pytestmark = pytest.mark.node

NODE_A = "architect-e2e-node"
NODE_B = "architect-e2e-node-b"
DOWN = UP.parent / "down"
PYTHON = "architect.local/python:3.11"
BUSYBOX = "architect.local/busybox:1.35"
NODEB_CGROUP = "architect-e2e-b"
NODEB_VETH = "arche2e-b-host"
NODEB_POD_CIDR = "10.244.1.0/24"
APP = "my-app"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def two_nodes(node_cluster: Cluster) -> Iterator[Cluster]:
    proc = _run(str(UP), "--nodes", "2")
    if proc.returncode != 0:
        pytest.fail(f"up --nodes 2 failed:\n{proc.stderr[-4000:]}", pytrace=False)
    yield node_cluster
    proc = _run(str(DOWN), "--node-b", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _pinned_pod(name: str, node: str, image: str, command: list[str]) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                 "restartPolicy": "Never",
                 "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                 "command": command}]},
    })


SERVE = ["python3", "-c",
         "import http.server as h, socket\n"
         "class H(h.BaseHTTPRequestHandler):\n"
         "    def do_GET(self):\n"
         "        b = socket.gethostname().encode()\n"
         "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
         "        self.end_headers(); self.wfile.write(b)\n"
         "h.HTTPServer(('', 8080), H).serve_forever()\n"]


def test_second_node_registers_ready_with_own_address(two_nodes: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in get_json(two_nodes, "nodes")["items"]}
    assert {NODE_A, NODE_B} <= set(nodes)
    addr = {name: next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
            for name, n in nodes.items()}
    assert addr[NODE_A] != addr[NODE_B]
    for name in (NODE_A, NODE_B):
        conds = {c["type"]: c["status"] for c in nodes[name]["status"]["conditions"]}
        assert conds["Ready"] == "True", (name, conds)


def test_pods_on_both_nodes_reach_each_other_over_tcp(two_nodes: Cluster) -> None:
    with namespace(two_nodes, "two-nodes") as ns:
        for name, node in (("srv-a", NODE_A), ("srv-b", NODE_B)):
            kubectl(two_nodes, "apply", "-n", ns, "-f", "-",
                    stdin=_pinned_pod(name, node, PYTHON, SERVE))
        for name in ("srv-a", "srv-b"):
            kubectl(two_nodes, "wait", "-n", ns, "--for=condition=Ready", f"pod/{name}",
                    "--timeout=120s")
        pods = {p["metadata"]["name"]: p for p in get_json(two_nodes, "pods", "-n", ns)["items"]}
        assert pods["srv-a"]["spec"]["nodeName"] == NODE_A
        assert pods["srv-b"]["spec"]["nodeName"] == NODE_B
        ip_a, ip_b = pods["srv-a"]["status"]["podIP"], pods["srv-b"]["status"]["podIP"]
        assert ip_b.startswith("10.244.1."), ip_b  # node B's own pod CIDR
        assert ip_a.startswith("10.244.0."), ip_a
        # Each server answers the other pod's request with its own hostname.
        for client, target, expect in (("srv-a", ip_b, "srv-b"), ("srv-b", ip_a, "srv-a")):
            def answered(client: str = client, target: str = target, expect: str = expect) -> bool:
                out = kubectl(two_nodes, "exec", "-n", ns, client, "--", "python3", "-c",
                              f"import urllib.request as u; print(u.urlopen("
                              f"'http://{target}:8080/', timeout=5).read().decode())",
                              check=False)
                return out.returncode == 0 and out.stdout.strip() == expect
            eventually(f"{client} reaches {expect} at {target}", answered, 60, 1)
        # The API server reaches node B's kubelet (logs/exec went through it above),
        # and node B's pods reach the API server through the kubernetes Service.
        out = kubectl(two_nodes, "exec", "-n", ns, "srv-b", "--", "python3", "-c",
                      "import socket; socket.create_connection(('10.96.0.1', 443), 5); print('ok')")
        assert out.stdout.strip() == "ok"


# --- last: node B goes ---------------------------------------------------------


def _netns_of(pid: str) -> str:
    try:
        return str(Path(f"/proc/{pid}/ns/net").readlink())
    except OSError:
        return ""


def _host_leftovers(netns_b: str) -> list[str]:
    left = []
    mounts = Path("/proc/self/mountinfo").read_text()
    if "/node-b" in mounts:
        left.append("mounts")
    if _run("ip", "link", "show", NODEB_VETH).returncode == 0:
        left.append("veth")
    if _run("ip", "route", "show", NODEB_POD_CIDR).stdout.strip():
        left.append("route")
    if list(Path("/sys/fs/cgroup").glob(f"*/{NODEB_CGROUP}")):
        left.append("cgroups")
    nat = _run("iptables-save").stdout
    if "architect-e2e-b" in nat:
        left.append("iptables")
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "/node-b/" in cmd or "architect-e2e-node-b" in cmd or _netns_of(p.name) == netns_b:
            left.append(f"process {p.name}: {cmd[:80]}")
    return left


def test_down_node_b_leaves_nothing_of_it(two_nodes: Cluster) -> None:
    with namespace(two_nodes, "two-nodes-down") as ns:
        # A running pod on node B when it goes: its processes must go too.
        kubectl(two_nodes, "apply", "-n", ns, "-f", "-",
                stdin=_pinned_pod("sleeper", NODE_B, BUSYBOX, ["sleep", "3600"]))
        kubectl(two_nodes, "wait", "-n", ns, "--for=condition=Ready", "pod/sleeper",
                "--timeout=120s")
        holder = Path("/run/architect-e2e/pids/nodeb-ns.pid").read_text().strip()
        netns_b = _netns_of(holder)
        assert netns_b and netns_b != _netns_of("self")
        # Node B's own processes (containerd, kubelet, shims) live in that namespace.
        assert len(_host_leftovers(netns_b)) >= 3
        proc = _run(str(DOWN), "--node-b", timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _host_leftovers(netns_b) == []
    names = {n["metadata"]["name"] for n in get_json(two_nodes, "nodes")["items"]}
    assert names == {NODE_A}
    # Node A still runs pods after node B left.
    kubectl(two_nodes, "wait", "--for=condition=Ready", f"node/{NODE_A}", "--timeout=30s")
