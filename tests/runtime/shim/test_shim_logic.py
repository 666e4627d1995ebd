"""Pure parts of the shim: flags, socket address, start plan, control requests, events."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from architect.runtime.checkpoint import proc
from architect.runtime.shim import (
    binary,
    control,
    events,
    plan,
    podinfo,
    reaper,
    runc,
    runtimeconfig,
    stats,
)
from architect.runtime.shim.pb import events_pb2, runc_options_pb2, runtime_options_pb2
from architect.runtime.shim.ttrpc import TtrpcError

# -- flags ------------------------------------------------------------------------


def test_go_flag_syntax_as_containerd_passes_it() -> None:
    a = binary.parse_args(
        ["-namespace", "k8s.io", "-address", "/run/c.sock", "-publish-binary",
         "/usr/bin/containerd", "-id", "abc", "-debug", "start"]
    )
    assert (a.namespace, a.address, a.publish_binary, a.id, a.debug, a.action) == (
        "k8s.io", "/run/c.sock", "/usr/bin/containerd", "abc", True, "start"
    )
    b = binary.parse_args(["--namespace=ns", "-id=x", "-bundle", "/b", "delete"])
    assert (b.namespace, b.id, b.bundle, b.action) == ("ns", "x", "/b", "delete")
    assert binary.parse_args(["-namespace", "n", "-id", "i"]).action == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-id", "x", "start"], "namespace cannot be empty"),
        (["-namespace", "n", "start"], "id cannot be empty"),
        (["-namespace", "n", "-id", "x", "-bogus", "start"], "not defined: -bogus"),
        (["-namespace", "n", "-id"], "-id needs a value"),
        (["-namespace", "n", "-id", "x", "launch"], "unknown action 'launch'"),
    ],
)
def test_bad_flags_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(binary.UsageError, match=message):
        binary.parse_args(argv)


def test_main_reports_usage_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert binary.main(["-namespace", "n", "-id", "x", "frobnicate"]) == 2
    assert "unknown action 'frobnicate'" in capsys.readouterr().err


def test_socket_address_matches_containerd() -> None:
    # shim.SocketAddress: sha256(filepath.Join(address, ns, id)) under /run/containerd/s
    want = hashlib.sha256(b"/run/containerd/containerd.sock/default/abc").hexdigest()
    assert binary.socket_address("/run/containerd/containerd.sock", "default", "abc") == (
        f"unix:///run/containerd/s/{want}"
    )
    assert len(binary.socket_address("/x", "k8s.io", "y" * 64)) - len("unix://") < 106


# -- plan -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("1m30s", 90), ("2h", 7200)]
)
def test_durations(text: str, seconds: float) -> None:
    assert plan.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "1x", "30s "])
def test_bad_durations(text: str) -> None:
    with pytest.raises(plan.PlanError):
        plan.parse_duration(text)


def _ready(d: Path, mark: str = plan.READY_MARK, namespace: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / plan.NAMESPACE_MARK).write_text(namespace)
    (d / mark).touch()
    return d


def test_a_handover_is_restored_only_by_a_pod_of_its_namespace(tmp_path: Path) -> None:
    """Pod-template hashes repeat across namespaces (the same Deployment in two)."""
    ann = {plan.ANN_TEMPLATE_HASH: "5d9c", plan.CRI_CONTAINER_NAME: "app",
           plan.CRI_SANDBOX_NAMESPACE: "team-b", plan.CRI_SANDBOX_NAME: "web-new"}
    _ready(plan.handover_dir(tmp_path, "5d9c", "app", plan.source_slot("team-a", "web-old")),
           namespace="team-a")
    p = plan.plan_start("runc", ann, tmp_path, None)
    assert p.path == "fresh" and "no checkpoint" in p.reason  # not even claimed
    assert not (tmp_path / "handover" / "5d9c" / "app" / "from_team-a_web-old"
                / plan.CLAIMED_MARK).exists()
    # One fetched for this pod that records another namespace: refused.
    d = _ready(plan.handover_dir(tmp_path, "5d9c", "app",
                                 plan.destination_slot("team-b", "web-new")), namespace="team-a")
    p = plan.plan_start("runc", ann, tmp_path, None)
    assert p.path == "fresh" and "belongs to namespace 'team-a'" in p.reason
    (d / plan.NAMESPACE_MARK).write_text("team-b")
    assert plan.plan_start("runc", ann, tmp_path, None).path == "restore"
    (d / plan.NAMESPACE_MARK).unlink()  # left by a version that recorded none
    p = plan.plan_start("runc", ann, tmp_path, None)
    assert p.path == "fresh" and "records no namespace" in p.reason


def test_plan_runc_paths(tmp_path: Path) -> None:
    ann = {plan.ANN_TEMPLATE_HASH: "5d9c", plan.CRI_CONTAINER_NAME: "app",
           plan.CRI_SANDBOX_NAMESPACE: "shop", plan.CRI_SANDBOX_NAME: "web-new"}
    assert plan.plan_start("runc", ann, tmp_path, None).path == "fresh"
    own = _ready(tmp_path / "own")
    p = plan.plan_start("runc", ann, tmp_path, own)
    assert (p.path, p.image) == ("restore", own)
    d = plan.handover_dir(tmp_path, "5d9c", "app", plan.source_slot("shop", "web-old"))
    _ready(d, plan.PENDING_MARK, "shop")
    p = plan.plan_start("runc", {**ann, plan.ANN_SCALEUP_TIMEOUT: '{"app": "45s"}'}, tmp_path, None)
    assert (p.path, p.image, p.wait_seconds) == ("restore", d, 45)
    _ready(d, namespace="shop")
    p = plan.plan_start("runc", ann, tmp_path, None)
    assert (p.path, p.image, p.wait_seconds) == ("restore", d, 0)
    assert (d / plan.CLAIMED_MARK).read_text() == "web-new"
    # The image fetched for this pod comes first.
    fetched = _ready(plan.handover_dir(tmp_path, "5d9c", "app",
                                       plan.destination_slot("shop", "web-new")), namespace="shop")
    assert plan.plan_start("runc", ann, tmp_path, None).image == fetched
    # runsc never takes the template-hash path.
    assert plan.plan_start("runsc", ann, tmp_path, None).path == "fresh"


def test_replacements_of_two_replicas_each_take_their_own_handover(tmp_path: Path) -> None:
    """Two pods of one template deleted on this node at once (a drain, a node
    restart): each replacement claims a different handover, ready ones first; a
    retried Create gets its own again; a third pod finds none."""
    def ann(pod: str) -> dict[str, str]:
        return {plan.ANN_TEMPLATE_HASH: "5d9c", plan.CRI_CONTAINER_NAME: "app",
                plan.CRI_SANDBOX_NAMESPACE: "shop", plan.CRI_SANDBOX_NAME: pod}

    a = _ready(plan.handover_dir(tmp_path, "5d9c", "app", plan.source_slot("shop", "web-a")),
               plan.PENDING_MARK, "shop")
    b = _ready(plan.handover_dir(tmp_path, "5d9c", "app", plan.source_slot("shop", "web-b")),
               namespace="shop")
    first = plan.plan_start("runc", ann("new-1"), tmp_path, None)
    second = plan.plan_start("runc", ann("new-2"), tmp_path, None)
    assert (first.image, first.wait_seconds) == (b, 0)  # ready before pending
    assert second.image == a and second.wait_seconds > 0
    assert plan.plan_start("runc", ann("new-1"), tmp_path, None).image == b
    assert plan.plan_start("runc", ann("new-3"), tmp_path, None).path == "fresh"
    assert {(a / plan.CLAIMED_MARK).read_text(), (b / plan.CLAIMED_MARK).read_text()} == {
        "new-1", "new-2"}


def test_a_taken_handover_removes_its_empty_parents_only(tmp_path: Path) -> None:
    a = _ready(plan.handover_dir(tmp_path, "5d9c", "app", plan.source_slot("shop", "web-a")))
    b = _ready(plan.handover_dir(tmp_path, "5d9c", "app", plan.source_slot("shop", "web-b")))
    shutil.rmtree(a)
    plan.prune_handover_parents(a)
    assert b.is_dir()
    shutil.rmtree(b)
    plan.prune_handover_parents(b)
    assert not (tmp_path / "handover" / "5d9c").exists() and (tmp_path / "handover").is_dir()


def _granted(d: Path, ns: str, allowed: list[str] | None = None) -> Path:
    _ready(d)
    (d / "manifest.json").write_text('{"files": []}')
    plan.write_grant(d, ns, allowed or [], plan.manifest_digest(d))
    return d


def test_plan_runsc_persistent_checkpoint(tmp_path: Path) -> None:
    ann = {plan.ANN_PERSISTENT: "warm", plan.CRI_SANDBOX_NAMESPACE: "team-a"}
    # Not here: wait (bounded) for the daemon, which pulls registry images.
    p = plan.plan_start("runsc", ann, tmp_path, None)
    assert p.path == "restore" and (p.claim_seconds, p.wait_seconds) == (
        plan.CLAIM_S, plan.FETCH_WAIT_S) and not p.consume
    d = tmp_path / "persistent" / "team-a" / "warm"
    d.mkdir(parents=True)
    (d / plan.UNAVAILABLE_MARK).write_text("PersistentCheckpoint warm not available: why")
    p = plan.plan_start("runsc", ann, tmp_path, None)
    assert (p.path, p.reason) == ("fresh", "PersistentCheckpoint warm not available: why")
    (d / plan.PENDING_MARK).touch()  # asked again: pending wins over an old answer
    assert plan.plan_start("runsc", ann, tmp_path, None).path == "restore"
    (d / plan.PENDING_MARK).unlink()
    (d / plan.UNAVAILABLE_MARK).unlink()
    d = _ready(d)
    p = plan.plan_start("runsc", ann, tmp_path, None)
    assert p.path == "fresh" and "no grant from the daemon" in p.reason
    _granted(d, "team-a")
    p = plan.plan_start("runsc", ann, tmp_path, None)
    assert (p.image, p.consume) == (d, False)
    other = _granted(tmp_path / "persistent" / "other" / "warm", "other", ["team-a"])
    ann2 = {**ann, plan.ANN_PERSISTENT: "other/warm"}
    assert plan.plan_start("runsc", ann2, tmp_path, None).image == other


def test_plan_runsc_persistent_refusals(tmp_path: Path) -> None:
    """allowedNamespaces and the digest are checked where the image is handed out."""
    d = _granted(tmp_path / "persistent" / "other" / "warm", "other", ["team-b"])
    ann = {plan.ANN_PERSISTENT: "other/warm", plan.CRI_SANDBOX_NAMESPACE: "team-a"}
    p = plan.plan_start("runsc", ann, tmp_path, None)
    assert p.path == "fresh"
    assert p.reason == ("PersistentCheckpoint other/warm does not list namespace team-a in "
                        "allowedNamespaces: not handed out")
    assert not plan.write_grant(d, "other", ["team-b"], plan.manifest_digest(d))  # unchanged
    plan.write_grant(d, "other", ["team-a"], "sha256:" + "0" * 64)
    p = plan.plan_start("runsc", ann, tmp_path, None)
    assert p.path == "fresh" and p.reason.startswith("PersistentCheckpoint other/warm: digest "
                                                     "mismatch (image sha256:")
    (d / "manifest.json").unlink()
    assert "image has no manifest" in plan.plan_start("runsc", ann, tmp_path, None).reason


def test_bad_scaleup_timeout_is_named() -> None:
    with pytest.raises(plan.PlanError, match="scaleup-timeout-containers"):
        plan.scaleup_timeout({plan.ANN_SCALEUP_TIMEOUT: "nope"}, "app")
    assert plan.scaleup_timeout({}, "app") == plan.DEFAULT_SCALEUP_TIMEOUT


# -- runtime options ----------------------------------------------------------------


def test_runtime_binary_from_options(tmp_path: Path) -> None:
    assert runtimeconfig.runtime_config(any_pb2.Any()).binary == "runc"
    ro = runc_options_pb2.Options(binary_name="runsc")
    packed = any_pb2.Any(type_url="containerd.runc.v1.Options", value=ro.SerializeToString())
    assert runtimeconfig.runtime_config(packed).binary == "runsc"
    cfg = tmp_path / "runsc.toml"
    cfg.write_text('binary_name = "runsc"\n')
    opt = runtime_options_pb2.Options(config_path=str(cfg))
    packed = any_pb2.Any(type_url="runtimeoptions.v1.Options", value=opt.SerializeToString())
    assert runtimeconfig.runtime_config(packed).binary == "runsc"
    cfg.write_text('binary_name = "sh"\n')
    with pytest.raises(TtrpcError, match="binary_name 'sh'"):
        runtimeconfig.runtime_config(packed)
    cfg.write_text("binary_name = \n")
    with pytest.raises(TtrpcError, match="not TOML"):
        runtimeconfig.runtime_config(packed)


def test_cgroup_metrics_read_v1_files(tmp_path: Path) -> None:
    for sub, name, value in (
        ("memory", "memory.usage_in_bytes", "1234"),
        ("memory", "memory.limit_in_bytes", "99999"),
        ("cpuacct", "cpuacct.usage", "777"),
        ("pids", "pids.current", "3"),
    ):
        d = tmp_path / sub / "ns" / "c1"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(value + "\n")
    m = stats.read_cgroup_metrics("/ns/c1", tmp_path)
    assert (m.memory.usage.usage, m.memory.usage.limit, m.cpu.usage.total, m.pids.current) == (
        1234, 99999, 777, 3
    )
    assert stats.read_cgroup_metrics("", tmp_path).memory.usage.usage == 0


# -- control requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"op": "explode"}', "op 'explode'"),
        (b'{"op": "hibernate"}', "needs a string 'id'"),
    ],
)
def test_control_request_errors(line: bytes, message: str) -> None:
    with pytest.raises(control.RequestError, match=message):
        control.parse_request(line)


def test_control_request_ok() -> None:
    assert control.parse_request(b'{"op": "wake", "id": "c"}') == {"op": "wake", "id": "c"}


# -- events -------------------------------------------------------------------------


def test_event_envelope_is_containerd_typeurl() -> None:
    topic, data = events.encode_event(events_pb2.TaskExit(container_id="c", pid=7, exit_status=3))
    assert topic == "/tasks/exit"
    wrapped = any_pb2.Any()
    wrapped.ParseFromString(data)
    assert wrapped.type_url == "containerd.events.TaskExit"
    ev = events_pb2.TaskExit()
    ev.ParseFromString(wrapped.value)
    assert (ev.container_id, ev.pid, ev.exit_status) == ("c", 7, 3)


def test_runc_log_error_is_the_last_error() -> None:
    text = (
        '{"level":"info","msg":"starting"}\n'
        '{"level":"error","msg":"first"}\n'
        '{"level":"error","msg":"exec: \\"sh\\": not found"}\n'
    )
    assert runc.last_log_error(text) == 'exec: "sh": not found'
    assert runc.last_log_error("plain failure\n") == "plain failure"


# -- reaper (real child processes) ----------------------------------------------------


async def test_reaper_exit_codes_and_early_exits() -> None:
    r = reaper.Reaper()
    r.install(asyncio.get_running_loop())
    seen: list[tuple[int, int]] = []
    r.subscribe(lambda pid, code: seen.append((pid, code)))
    try:
        pid, done = r.spawn(["sh", "-c", "exit 3"])
        assert await asyncio.wait_for(done, 10) == 3
        pid2, done2 = r.spawn(["sh", "-c", "kill -9 $$"])
        assert await asyncio.wait_for(done2, 10) == 128 + signal.SIGKILL
        assert (pid, 3) in seen and (pid2, 137) in seen
        # An exit nobody waited for yet is kept for whoever asks later.
        r.deliver(999999, 5)
        assert r.exited(999999) == 5
        assert await r.wait(999999) == 5
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)


def test_exit_code_of_wait_status() -> None:
    assert reaper.exit_code(3 << 8) == 3
    assert reaper.exit_code(signal.SIGTERM) == 128 + signal.SIGTERM
    assert os.WIFEXITED(0)


# -- generated code -------------------------------------------------------------------


@pytest.mark.root  # needs runtime/shim/install's packages (containerd's .proto sources)
def test_generated_protobuf_code_does_not_drift(tmp_path: Path) -> None:
    import subprocess

    shim_dir = Path(binary.__file__).resolve().parent
    res = subprocess.run(
        [str(shim_dir / "gen-proto")], env={**os.environ, "GEN_PROTO_OUT": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    fresh = sorted(p.name for p in tmp_path.glob("*_pb2.py*"))
    committed = sorted(p.name for p in (shim_dir / "pb").glob("*_pb2.py*"))
    assert fresh == committed
    for name in fresh:
        assert (tmp_path / name).read_text() == (shim_dir / "pb" / name).read_text(), (
            f"runtime/shim/pb/{name} drifted: run runtime/shim/gen-proto"
        )


def test_runsc_config_table_becomes_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text('binary_name = "runsc"\n[runsc_config]\nnetwork = "none"\ndebug = true\n')
    assert runtimeconfig.config_file(cfg) == runtimeconfig.RuntimeConfig(
        "runsc", ("--debug=true", "--network=none")
    )
    cfg.write_text('binary_name = "runsc"\nrunsc_config = ["x"]\n')
    with pytest.raises(TtrpcError, match="runsc_config"):
        runtimeconfig.config_file(cfg)
    with pytest.raises(TtrpcError, match="No such file"):
        runtimeconfig.config_file(tmp_path / "missing.toml")


async def test_runtime_command_is_bounded_in_time(tmp_path: Path) -> None:
    r = reaper.Reaper()
    r.install(asyncio.get_running_loop())
    fake = tmp_path / "runc"
    fake.write_text("#!/bin/sh\nsleep 30 &\nsleep 30\n")
    fake.chmod(0o755)
    try:
        client = runc.Runc(r, tmp_path / "root", str(fake), timeout=0.5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(runc.RuncError, match="timed out"):
            await client.state("c1")
        assert loop.time() - t0 < 10
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)


def test_oom_kill_counter() -> None:
    from architect.runtime.shim.oom import oom_kills

    assert oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3
    assert oom_kills("oom_kill_disable 0\nunder_oom 0\n") == 0


# -- one code path for engine commands -------------------------------------------------


async def test_engine_commands_run_through_the_shims_reaper(tmp_path: Path) -> None:
    """With the reaper as spawner, the reaper (not asyncio's watcher) sees the exit,
    input reaches stdin, and a timeout kills the whole process group."""
    r = reaper.Reaper()
    r.install(asyncio.get_running_loop())
    seen: list[int] = []
    r.subscribe(lambda pid, code: seen.append(code))
    try:
        done = await proc.run(["sh", "-c", "cat; exit 4"], 10, spawner=r.spawner, input=b"hi")
        assert (done.returncode, done.stdout) == (4, "hi")
        assert 4 in seen
        marker = tmp_path / "child.pid"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        done = await proc.run(
            ["sh", "-c", f"sleep 30 & echo $! > {marker}; wait"], 0.5, spawner=r.spawner
        )
        assert done.returncode == -9 and "timed out" in done.stderr
        assert loop.time() - t0 < 10
        child = int(marker.read_text())
        await asyncio.sleep(0.2)
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(
            f"/proc/{child}/stat").read_text().split()[2], "the group's child survived"
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)


async def test_default_spawner_reports_signals_like_the_reaper() -> None:
    done = await proc.run(["sh", "-c", "kill -9 $$"], 10)
    assert done.returncode == 128 + signal.SIGKILL


def test_runc_client_uses_the_backend_of_its_runtime(tmp_path: Path) -> None:
    r = reaper.Reaper()
    assert runc.Runc(r, tmp_path, "runc").backend.name == "runc-criu"
    assert runc.Runc(r, tmp_path, "runsc", ("--network=none",)).backend.name == "runsc"
    c = runc.Runc(r, tmp_path / "root", "runc").container("c1", tmp_path, "h1")
    assert (c.state_root, c.pod_template_hash) == (tmp_path / "root", "h1")


# -- what the OCI spec says about the pod ----------------------------------------------


def test_empty_dirs_and_netns_from_the_spec() -> None:
    vol = "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir"
    spec = {
        "mounts": [
            {"destination": "/data", "source": f"{vol}/data"},
            {"destination": "/etc/hosts", "source": "/var/lib/kubelet/pods/u1/etc-hosts"},
            {"destination": "/cache", "source": f"{vol}/cache"},
            {"destination": "/cache2", "source": f"{vol}/cache"},
        ],
        "linux": {"namespaces": [{"type": "pid"},
                                 {"type": "network", "path": "/var/run/netns/cni-1"}]},
    }
    assert podinfo.empty_dirs(spec) == (Path(f"{vol}/data"), Path(f"{vol}/cache"))
    assert podinfo.netns_path(spec) == "/var/run/netns/cni-1"
    assert podinfo.netns_path({"linux": {"namespaces": [{"type": "network"}]}}) is None
    assert podinfo.netns_path({}) is None
    assert podinfo.empty_dirs({}) == ()


def test_pod_addresses_from_ip_json() -> None:
    text = """[
      {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "scope": "host"}]},
      {"ifname": "eth0", "addr_info": [
        {"family": "inet", "local": "10.88.0.7", "scope": "global"},
        {"family": "inet6", "local": "fe80::1", "scope": "link"},
        {"family": "inet6", "local": "fd00::7", "scope": "global"}]}]"""
    assert podinfo.parse_addresses(text) == ("10.88.0.7", "fd00::7")
    assert podinfo.parse_addresses("") == ()
    assert podinfo.parse_addresses("not json") == ()


def test_a_local_handover_goes_before_the_pending_mark_of_one_on_its_way(tmp_path: Path) -> None:
    """The daemon marks every new replacement's own slot pending before it knows
    whether a handover comes from another node; a pod deleted on this node left
    one: that one is restored (the daemon then says nothing else comes)."""
    ann = {plan.ANN_TEMPLATE_HASH: "5d9c", plan.CRI_CONTAINER_NAME: "app",
           plan.CRI_SANDBOX_NAMESPACE: "shop", plan.CRI_SANDBOX_NAME: "web-new"}
    _ready(plan.handover_dir(tmp_path, "5d9c", "app", plan.destination_slot("shop", "web-new")),
           plan.PENDING_MARK, "shop")
    p = plan.plan_start("runc", ann, tmp_path, None)
    assert p.image is not None and p.image.name.startswith("to_") and p.wait_seconds > 0
    local = _ready(plan.handover_dir(tmp_path, "5d9c", "app", plan.source_slot("shop", "web-old")),
                   namespace="shop")
    p = plan.plan_start("runc", ann, tmp_path, None)
    assert (p.image, p.wait_seconds) == (local, 0)


def test_slot_marks_pending_nothing_and_clear(tmp_path: Path) -> None:
    """The daemon's and the transfer client's one set of slot marks."""
    d = plan.handover_dir(tmp_path, "5d9c", "app", plan.destination_slot("shop", "web-new"))
    assert plan.mark_slot_pending(d) and (d / plan.PENDING_MARK).exists()
    plan.mark_slot_nothing(d)
    assert (d / plan.NOTHING_MARK).exists() and not (d / plan.PENDING_MARK).exists()
    assert plan.mark_slot_pending(d) and not (d / plan.NOTHING_MARK).exists()
    plan.clear_slot(d)
    assert not (tmp_path / "handover").exists() or not any((tmp_path / "handover").iterdir())
    ready = _ready(d)
    assert not plan.mark_slot_pending(ready) and not (ready / plan.PENDING_MARK).exists()
    plan.mark_slot_nothing(ready)
    plan.clear_slot(ready)
    assert (ready / plan.READY_MARK).exists() and not (ready / plan.NOTHING_MARK).exists()
