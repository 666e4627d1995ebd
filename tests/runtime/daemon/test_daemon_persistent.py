"""The daemon's PersistentCheckpoint jobs (pure) and the runner's status writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from architect.policy.annotations import NODE_LABEL
from architect.runtime.daemon.persistent import Job, PersistentCheckpoints, image_of, jobs
from architect.runtime.shim.control import RequestError, parse_request


def _pc(name: str = "pc", phase: str = "Checkpointing", node: str = "n1") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "labels": {NODE_LABEL: node}},
            "spec": {"sourcePod": "src"}, "status": {"phase": phase}}


def _pod(running: bool = True) -> dict[str, Any]:
    state = {"running": {}} if running else {"waiting": {}}
    return {"metadata": {"namespace": "ns", "name": "src"},
            "status": {"containerStatuses": [{"containerID": "containerd://abc", "state": state}]}}


def test_jobs_checkpoint_a_running_pod_of_this_node() -> None:
    assert jobs([_pc()], [_pod()], "n1") == [Job("ns", "pc", "abc")]


@pytest.mark.parametrize("pc", [_pc(phase="Pending"), _pc(phase="Ready"), _pc(node="n2")])
def test_jobs_skip_other_phases_and_nodes(pc: dict[str, Any]) -> None:
    assert jobs([pc], [_pod()], "n1") == []


def test_jobs_skip_busy_ones() -> None:
    assert jobs([_pc()], [_pod()], "n1", frozenset({("ns", "pc")})) == []


def test_jobs_fail_without_pod_or_running_container() -> None:
    (gone,) = jobs([_pc()], [], "n1")
    assert gone.failure == "source pod ns/src is no longer on node n1"
    (idle,) = jobs([_pc()], [_pod(running=False)], "n1")
    assert idle.failure == "source pod ns/src has no running container"


def test_image_location_names_node_and_path() -> None:
    img = image_of("n1", {"dir": "/var/lib/x/persistent/ns/pc", "digest": "sha256:" + "a" * 64,
                          "size_bytes": 7})
    assert img == {"location": "node://n1/var/lib/x/persistent/ns/pc",
                   "digest": "sha256:" + "a" * 64, "sizeBytes": 7}


def _run(answer: dict[str, Any] | Exception) -> dict[str, Any]:
    patched: list[tuple[str, str, dict[str, Any]]] = []

    async def call(cid: str, req: dict[str, Any]) -> dict[str, Any]:
        assert req == {"op": "persistent-checkpoint", "id": cid, "namespace": "ns", "name": "pc"}
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def patch(ns: str, name: str, body: dict[str, Any]) -> None:
        patched.append((ns, name, body))

    async def go() -> None:
        r = PersistentCheckpoints("n1", call, patch)
        r.consider([_pc()], [_pod()])
        r.consider([_pc()], [_pod()])  # busy: not twice
        for _ in range(100):
            if patched:
                break
            await asyncio.sleep(0.01)
        r.consider([_pc()], [_pod()])  # the reflector still shows Checkpointing
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert len(patched) == 1
    return patched[0][2]["status"]


def test_runner_writes_ready_with_image() -> None:
    st = _run({"dir": "/d", "digest": "sha256:" + "b" * 64, "size_bytes": 9, "seconds": 1.5})
    assert st["phase"] == "Ready"
    assert st["image"]["location"] == "node://n1/d" and st["image"]["sizeBytes"] == 9
    assert "1.5s" in st["message"]


def test_runner_writes_failed_with_the_shims_reason() -> None:
    st = _run(RuntimeError("container abc runs under runc, not runsc"))
    assert st == {"phase": "Failed",
                  "message": "checkpoint failed: container abc runs under runc, not runsc"}


def test_control_op_validates_names() -> None:
    ok = b'{"op": "persistent-checkpoint", "id": "c", "namespace": "ns", "name": "pc"}'
    assert parse_request(ok)["name"] == "pc"
    for bad in (b'"../x"', b'"a/b"', b'""', b"3"):
        line = b'{"op": "persistent-checkpoint", "id": "c", "namespace": "ns", "name": ' + bad + b"}"
        with pytest.raises(RequestError, match="want a Kubernetes object name"):
            parse_request(line)
    with pytest.raises(RequestError, match="unknown field"):
        parse_request(b'{"op": "persistent-checkpoint", "id": "c", "namespace": "n", '
                      b'"name": "p", "dir": "/etc"}')


def test_orphans_are_images_of_deleted_objects_only(tmp_path: Any) -> None:
    import os

    from architect.runtime.daemon.persistent import orphans

    for ns, name in (("ns", "kept"), ("ns", "gone"), ("ns", "young")):
        (tmp_path / ns / name).mkdir(parents=True)
    old = 1_000_000_000
    for name in ("kept", "gone"):
        os.utime(tmp_path / "ns" / name, (old, old))
    assert orphans(tmp_path, {("ns", "kept")}) == [tmp_path / "ns" / "gone"]
    assert orphans(tmp_path / "missing", set()) == []


def test_grants_for_ready_images_of_this_node() -> None:
    from architect.runtime.daemon.persistent import grants

    ready = _pc(phase="Ready")
    ready["spec"]["allowedNamespaces"] = ["team-b"]
    ready["status"]["image"] = {"location": "node://n1/var/x", "digest": "sha256:ab"}
    elsewhere = {**ready, "status": {"phase": "Ready", "image": {"location": "node://n2/var/x"}}}
    assert grants([ready, elsewhere, _pc()], "n1") == [("ns", "pc", ["team-b"], "sha256:ab")]


def test_start_event_says_restored_or_why_fresh() -> None:
    from architect.policy.annotations import START_FROM_PERSISTENT
    from architect.runtime.daemon.persistent import start_event

    pod = {"metadata": {"annotations": {START_FROM_PERSISTENT: "other/warm"}}}
    assert start_event(pod, {"start_path": "restore"})[:2] == (
        "Normal", "RestoredFromPersistentCheckpoint")
    etype, reason, msg = start_event(pod, {"start_path": "fresh", "start_reason": "digest mismatch"})
    assert (etype, reason) == ("Warning", "PersistentCheckpointNotUsed")
    assert msg == "started fresh instead of from PersistentCheckpoint other/warm: digest mismatch"


# --- storage.registry: claims of pods naming an object not on this node -------

def _gv(name: str = "gv", ref: str = "warm", ns: str = "team-a", started: bool = False,
        runtime: str = "runsc-architect") -> dict[str, Any]:
    from architect.policy.annotations import START_FROM_PERSISTENT

    st = {"containerStatuses": [{"containerID": "containerd://x"}]} if started else {}
    return {"metadata": {"namespace": ns, "name": name, "uid": f"u-{name}",
                         "annotations": {START_FROM_PERSISTENT: ref}},
            "spec": {"runtimeClassName": runtime}, "status": st}


def test_jobs_carry_the_registry() -> None:
    pc = _pc()
    pc["spec"]["storage"] = {"registry": "reg:5000/c/app"}
    assert jobs([pc], [_pod()], "n1") == [Job("ns", "pc", "abc", registry="reg:5000/c/app")]
    pc["spec"]["storage"] = {"registry": "app"}
    (bad,) = jobs([pc], [_pod()], "n1")
    assert bad.failure.startswith("storage.registry: 'app' is not a registry reference")


def test_claims_are_unstarted_runsc_pods_naming_one() -> None:
    from architect.runtime.daemon.persistent import Claim, claims

    pods = [_gv("a"), _gv("b", "other/warm"), _gv("c", started=True),
            _gv("d", runtime="runc-architect"), _gv("e")]
    assert claims(pods, {"u-e"}) == [Claim("u-a", "team-a", "team-a", "warm", "a"),
                                     Claim("u-b", "team-a", "other", "warm", "b")]


def _ready_pc(location: str, allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"metadata": {"namespace": "other", "name": "warm"},
            "spec": {"sourcePod": "s", "allowedNamespaces": list(allowed)},
            "status": {"phase": "Ready", "image": {"location": location,
                                                   "digest": "sha256:" + "c" * 64}}}


@pytest.mark.parametrize(("pc", "want"), [
    (None, ("unavailable", "PersistentCheckpoint other/warm not available on this node: "
                           "PersistentCheckpoint other/warm not found")),
    (_ready_pc("reg:5000/a:t@sha256:" + "d" * 64), (
        "unavailable", "PersistentCheckpoint other/warm not available on this node: "
                       "PersistentCheckpoint other/warm does not list namespace team-a in "
                       "allowedNamespaces")),
    # Node-local elsewhere: fetched from the holder, but only for an allowed namespace.
    (_ready_pc("node://n2/var/x", ("team-a",)), ("fetch", "n2")),
    (_ready_pc("node://n2/var/x"), (
        "unavailable", "PersistentCheckpoint other/warm not available on this node: "
                       "PersistentCheckpoint other/warm does not list namespace team-a in "
                       "allowedNamespaces")),
    (_ready_pc("node://n1/var/x", ("team-a",)), (
        "unavailable", "PersistentCheckpoint other/warm not available on this node: "
                       "its image is node-local on node n1")),
    ({**_ready_pc("x", ("team-a",)), "status": {"phase": "Checkpointing"}}, (
        "unavailable", "PersistentCheckpoint other/warm not available on this node: "
                       "PersistentCheckpoint other/warm is Checkpointing, not Ready")),
    (_ready_pc("reg:5000/a:t@sha256:" + "d" * 64, ("team-a",)),
     ("pull", "reg:5000/a:t@sha256:" + "d" * 64)),
])
def test_pull_plan(pc: dict[str, Any] | None, want: tuple[str, str]) -> None:
    from architect.runtime.daemon.persistent import Claim, pull_plan

    assert pull_plan(Claim("u", "team-a", "other", "warm"), pc, "n1") == want


def test_keep_drops_registry_copies_but_recent_pulls() -> None:
    from architect.runtime.daemon.persistent import keep

    local = _ready_pc("node://n1/var/x")
    reg = {**_ready_pc("reg:5000/a:t@sha256:" + "d" * 64),
           "metadata": {"namespace": "other", "name": "r"}}
    taking = {**_pc("t"), "status": {"phase": "Checkpointing"}}
    assert keep([local, reg, taking], [("ns", "b")], [("x", "p")]) == {
        ("other", "warm"), ("ns", "t"), ("ns", "b"), ("x", "p")}


def test_a_claim_marks_pending_then_says_why_not(tmp_path: Any) -> None:
    """The shim waits on pending; the daemon's answer (here: not found) replaces it."""
    from architect.runtime.shim import plan

    asked: list[tuple[str, str]] = []

    async def get(ns: str, name: str) -> dict[str, Any] | None:
        asked.append((ns, name))
        await asyncio.sleep(0.05)
        return None

    async def go() -> None:
        async def nothing(*a: Any) -> Any:
            return {}

        r = PersistentCheckpoints("n1", nothing, nothing, tmp_path, None, get)
        r.consider([], [_gv("a", "other/warm")])
        d = tmp_path / "persistent" / "other" / "warm"
        assert (d / plan.PENDING_MARK).exists()
        r.consider([], [_gv("a", "other/warm")])  # seen: asked once
        for _ in range(100):
            if plan.unavailable(d):
                break
            await asyncio.sleep(0.01)
        assert not (d / plan.PENDING_MARK).exists()
        assert plan.unavailable(d) == ("PersistentCheckpoint other/warm not available on this "
                                       "node: PersistentCheckpoint other/warm not found")
        await r.close()

    asyncio.run(go())
    assert asked == [("other", "warm")]


def test_a_pulled_copy_goes_once_its_pods_run(tmp_path: Any, monkeypatch: Any) -> None:
    """One pull for two pods naming it; removed when both run (the registry keeps it)."""
    from architect.runtime.daemon import persistent
    from architect.runtime.shim import plan

    pulls: list[str] = []

    def pull(location: str, digest: str, d: Any, ns: str, allowed: list[str],
             insecure: Any = ()) -> None:  # stands in for the registry (tested against one)
        pulls.append(location)
        (d / plan.READY_MARK).touch()
        (d / plan.PENDING_MARK).unlink()

    monkeypatch.setattr(persistent.registry, "pull_checkpoint", pull)
    loc = "reg:5000/a:t@sha256:" + "d" * 64

    async def get(ns: str, name: str) -> dict[str, Any] | None:
        return _ready_pc(loc, ("team-a",))

    async def go() -> None:
        async def nothing(*a: Any) -> Any:
            return {}

        r = PersistentCheckpoints("n1", nothing, nothing, tmp_path, None, get)
        a, b = _gv("a", "other/warm"), _gv("b", "other/warm")
        r.consider([], [a, b])
        d = tmp_path / "persistent" / "other" / "warm"
        for _ in range(100):
            if (d / plan.READY_MARK).exists():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        r.consider([], [_gv("a", "other/warm", started=True), b])
        assert (d / plan.READY_MARK).exists()  # b still waits on it
        r.consider([], [_gv("a", "other/warm", started=True)])  # b gone, a runs
        assert not d.exists()
        await r.close()

    asyncio.run(go())
    assert pulls == [loc]



MANIFEST = b'{"files": []}'


def _fetching(tmp_path: Any, fetch: Any, digest: str) -> tuple[Any, Any]:
    """A runner whose holder fetch is ``fetch``; the image dir of other/warm."""
    pc = _ready_pc("node://n2/var/x", ("team-a", "team-b"))
    pc["status"]["image"]["digest"] = digest

    async def get(ns: str, name: str) -> dict[str, Any] | None:
        return pc

    async def nothing(*a: Any) -> Any:
        return {}

    r = PersistentCheckpoints("n1", nothing, nothing, tmp_path, None, get, fetch=fetch)
    return r, tmp_path / "persistent" / "other" / "warm"


def _run_claim(tmp_path: Any, fetch: Any, digest: str) -> Any:
    from architect.runtime.shim import plan

    async def go() -> Any:
        r, d = _fetching(tmp_path, fetch, digest)
        r.consider([], [_gv("a", "other/warm")])
        assert (d / plan.PENDING_MARK).exists()  # at once: the shim waits on it
        for _ in range(200):
            if not (d / plan.PENDING_MARK).exists():
                break
            await asyncio.sleep(0.01)
        await r.close()
        return d

    return asyncio.run(go())


def _writes_manifest(asked: list[Any]) -> Any:
    async def fetch(claim: Any, pc: Any, holder: str, d: Any) -> str:
        asked.append((claim.pod_namespace, claim.pod, holder))
        (d / "manifest.json").write_bytes(MANIFEST)
        return "ok"
    return fetch


def test_a_node_local_image_elsewhere_is_fetched_and_granted(tmp_path: Any) -> None:
    import hashlib

    from architect.runtime.shim import plan

    asked: list[Any] = []
    digest = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    d = _run_claim(tmp_path, _writes_manifest(asked), digest)
    assert asked == [("team-a", "a", "n2")]
    assert (d / plan.READY_MARK).exists() and not plan.unavailable(d)
    assert plan.persistent_refusal(d, "team-a", "other/warm") == ""
    assert "does not list namespace x" in plan.persistent_refusal(d, "x", "other/warm")


def test_a_fetched_image_of_another_digest_is_not_handed_out(tmp_path: Any) -> None:
    import hashlib

    from architect.runtime.shim import plan

    d = _run_claim(tmp_path, _writes_manifest([]), "sha256:" + "c" * 64)
    assert plan.unavailable(d) == (
        "PersistentCheckpoint other/warm: fetch of its node-local image from node n2 failed: "
        f"digest mismatch: image sha256:{hashlib.sha256(MANIFEST).hexdigest()}, "
        f"object sha256:{'c' * 64}")
    assert sorted(p.name for p in d.iterdir()) == [plan.UNAVAILABLE_MARK]  # nothing else


def test_a_failed_fetch_leaves_no_partial_image_and_says_why(tmp_path: Any) -> None:
    from architect.engine.controlplane.transfer import TransferError
    from architect.runtime.shim import plan

    async def fetch(claim: Any, pc: Any, holder: str, d: Any) -> str:
        (d / "payload" / "engine").mkdir(parents=True)
        (d / "payload" / "engine" / "half.img").write_bytes(b"x" * 100)
        raise TransferError("no running Architect daemon on node n2 (the image's holder)")

    d = _run_claim(tmp_path, fetch, "sha256:" + "c" * 64)
    assert plan.unavailable(d) == (
        "PersistentCheckpoint other/warm: fetch of its node-local image from node n2 failed: "
        "no running Architect daemon on node n2 (the image's holder)")
    assert sorted(p.name for p in d.iterdir()) == [plan.UNAVAILABLE_MARK]
    start = plan.plan_start("runsc", {plan.ANN_PERSISTENT: "other/warm",
                                      plan.CRI_SANDBOX_NAMESPACE: "team-a"}, tmp_path, None)
    assert (start.path, start.reason) == ("fresh", plan.unavailable(d))
