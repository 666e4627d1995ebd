"""Pure mappings of the daemon: pods -> targets, status annotation, adoption state,
watch bookkeeping, resize bodies, flags."""

from __future__ import annotations

import pytest

from architect.engine.directives import ResizeTarget
from architect.engine.telemetry import ContainerKey, ContainerState
from architect.errors import UsageError
from architect.runtime.daemon.apiserver import apply_event, next_backoff, resize_patch
from architect.runtime.daemon.config import parse_args
from architect.runtime.daemon.targets import (
    annotated_states,
    build_target,
    container_ids,
    declared_ports,
    network_namespace,
    status_annotation,
    status_file_path,
)
from architect.runtime.daemon.tracker import Tracker, TransitionError, adopted_state
from tests.factories import NS, hibernation, pod
from tests.runtime.daemon.fakes import T0

S = ContainerState


def test_container_ids_only_containerd_ones() -> None:
    p = pod(containers=("a", "b"))
    p["status"]["containerStatuses"][1]["containerID"] = "docker://xyz"
    p["status"]["containerStatuses"].append({"name": "c"})
    assert container_ids(p) == {"a": "web-a-id"}


def test_declared_ports_by_protocol() -> None:
    p = pod()
    p["spec"]["containers"][0]["ports"] = [
        {"containerPort": 8080},
        {"containerPort": 53, "protocol": "UDP"},
        {"containerPort": 9090, "protocol": "TCP"},
        {"containerPort": "http"},  # a name, not a port: skipped
    ]
    assert declared_ports(p, "main") == ((8080, 9090), (53,))
    assert declared_ports(p, "other") == ((), ())


def test_target_from_pod_and_policy() -> None:
    p = pod(containers=("side", "main"))
    hp = hibernation(containers=("main",), network="connections", shadow=((8080, 18080),))
    t = build_target(p, ContainerKey(NS, "web", "main"), hp)
    assert (t.container_id, t.index, t.mode) == ("web-main-id", 1, "connections")
    assert t.tcp_ports == (8080,) and t.shadow_ports == ((8080, 18080),)
    assert t.requests == (("cpu", "250m"), ("memory", "64Mi"))
    # Only migrated (no HibernationPolicy): no network side at all.
    assert build_target(p, ContainerKey(NS, "web", "main"), None).mode == "none"


def test_target_without_declared_ports_watches_all_but_the_others() -> None:
    p = pod(containers=("main", "side"), ports=())
    p["spec"]["containers"][1]["ports"] = [
        {"containerPort": 9000},
        {"containerPort": 5353, "protocol": "UDP"},
    ]
    # The health-check proxy sidecar admission injects: its listener is excluded.
    p["spec"]["initContainers"] = [
        {"name": "architect-health-18080", "restartPolicy": "Always",
         "ports": [{"name": "hc-18080", "containerPort": 18080}]}
    ]
    t = build_target(p, ContainerKey(NS, "web", "main"), hibernation(containers=("main",)))
    assert (t.mode, t.tcp_ports, t.udp_ports) == ("packets", (), ())
    assert (t.except_tcp, t.except_udp) == ((9000, 18080), (5353,))
    assert t.note == ""


def test_target_with_declared_ports_has_no_exclusions() -> None:
    p = pod(containers=("main", "side"))
    t = build_target(p, ContainerKey(NS, "web", "main"), hibernation(containers=("main",)))
    assert (t.tcp_ports, t.except_tcp, t.except_udp) == ((8080,), (), ())


@pytest.mark.parametrize(
    ("network", "spec_extra", "ports", "mode", "note"),
    [
        ("packets", {"hostNetwork": True}, [{"containerPort": 80}], "none", "hostNetwork pod"),
        ("packets", {"hostNetwork": True}, [], "none", "hostNetwork pod"),
        ("connections", {}, [{"containerPort": 53, "protocol": "UDP"}], "none", "only UDP"),
        ("packets", {}, [{"containerPort": 53, "protocol": "UDP"}], "packets", ""),
        ("connections", {}, [], "connections", ""),
    ],
)
def test_network_mode_the_daemon_applies(
    network: str, spec_extra: dict[str, object], ports: list[dict[str, object]], mode: str,
    note: str,
) -> None:
    p = pod()
    p["spec"].update(spec_extra)
    p["spec"]["containers"][0]["ports"] = ports
    t = build_target(p, ContainerKey(NS, "web", "main"), hibernation(network=network))
    assert t.mode == mode
    assert (note in t.note) if note else t.note == ""


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (None, {}),
        ('{"main":"SCALED_DOWN","x":"BOGUS"}', {"main": S.SCALED_DOWN}),
        ("not json", {}),
        ('["main"]', {}),
    ],
)
def test_annotated_states(raw: str | None, want: dict[str, ContainerState]) -> None:
    assert annotated_states(pod(status=raw)) == want


def test_status_annotation_is_stable() -> None:
    a = status_annotation({"b": S.RUNNING, "a": S.SCALED_DOWN})
    assert a == '{"a":"SCALED_DOWN","b":"RUNNING"}'
    assert a == status_annotation({"a": S.SCALED_DOWN, "b": S.RUNNING})


def test_paths() -> None:
    assert status_file_path("/var/lib/kubelet", "u1", "architect-run") == (
        "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/architect-run/status.json"
    )
    spec = {"linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/7/ns/net"}]}}
    assert network_namespace(spec) == "/proc/7/ns/net"
    assert network_namespace({"linux": {"namespaces": [{"type": "network"}]}}) is None


@pytest.mark.parametrize(
    ("shim", "annotated", "want"),
    [
        ("SCALED_DOWN", None, S.SCALED_DOWN),
        ("SCALED_DOWN", S.RUNNING, S.SCALED_DOWN),
        ("RUNNING", S.SCALED_DOWN, S.RUNNING),  # the shim knows the process
        ("RUNNING", S.CHECKPOINTING, S.RUNNING),
        (None, S.SCALED_DOWN, S.SCALED_DOWN),
        (None, S.RESTORING, S.RUNNING),  # a dead daemon's half transition
        (None, None, S.RUNNING),
    ],
)
def test_adopted_state(shim: str | None, annotated: ContainerState | None, want: S) -> None:
    assert adopted_state(shim, annotated) is want


def test_tracker_transitions_and_refusals() -> None:
    tr = Tracker()
    k = ContainerKey(NS, "web", "main")
    tr.add(k, S.RUNNING, T0)
    tr.begin_hibernate(k, T0)
    with pytest.raises(TransitionError, match="already in flight"):
        tr.begin_hibernate(k, T0)
    assert tr.begin_wake(k, T0, "packet") is False  # not hibernated yet
    tr.hibernated(k, T0)
    assert tr.begin_wake(k, T0, "packet") is True
    assert tr.begin_wake(k, T0, "packet") is False  # a second packet: already waking
    tr.wake_failed(k, T0)
    assert tr.get(k) is not None and tr.get(k).state is S.SCALED_DOWN  # type: ignore[union-attr]
    with pytest.raises(TransitionError, match="SCALED_DOWN -> RUNNING"):
        tr.hibernate_failed(k, T0)
    assert tr.counts() == {S.SCALED_DOWN: 1}
    assert tr.stale([]) == [k]


def test_tracker_activity_only_moves_forward() -> None:
    tr = Tracker()
    k = ContainerKey(NS, "web", "main")
    tr.add(k, S.RUNNING, T0)
    later = T0.replace(minute=5)
    tr.observe(k, later, 2, 0)
    tr.observe(k, T0, 0, 0)
    t = tr.telemetry()[k]
    assert t.last_activity == later and t.open_connections == 0


def test_apply_event() -> None:
    store: dict[tuple[str, str], dict[str, object]] = {}
    obj = {"metadata": {"namespace": "a", "name": "p", "resourceVersion": "5"}}
    assert apply_event(store, {"type": "ADDED", "raw_object": obj}) == "5"
    assert store == {("a", "p"): obj}
    bm = {"metadata": {"resourceVersion": "9"}}
    assert apply_event(store, {"type": "BOOKMARK", "raw_object": bm}) == "9"
    assert apply_event(store, {"type": "DELETED", "raw_object": obj}) == "5"
    assert store == {}
    assert apply_event(store, {"type": "ERROR", "raw_object": "junk"}) is None


def test_backoff_doubles_and_caps() -> None:
    assert [next_backoff(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert next_backoff(50) == 30.0


def test_resize_bodies() -> None:
    req = {"cpu": "250m", "memory": "64Mi"}
    down = resize_patch("main", ResizeTarget.HIBERNATED, req)
    assert down == {"spec": {"containers": [
        {"name": "main", "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]}}
    up = resize_patch("main", ResizeTarget.ORIGINAL, req)
    assert up["spec"]["containers"][0]["resources"]["requests"] == req


def test_flags() -> None:
    cfg = parse_args(["--tick", "0.5"], env={"NODE_NAME": "n1"})
    assert (cfg.node, cfg.tick, cfg.metrics_port, cfg.resize) == ("n1", 0.5, 9090, True)
    assert parse_args(["--no-resize"], env={"NODE_NAME": "n1"}).resize is False


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--node: not given and NODE_NAME is not set"),
        (["--node", "n", "--tick", "0"], {}, "--tick '0': must be between 0.1 and 60"),
        (["--node", "n", "--tick", "fast"], {}, "--tick 'fast': not a number"),
        (["--node", "n", "--metrics-port", "1.5"], {}, "--metrics-port '1.5': not an integer"),
        (["--node", "n", "--metrics-port", "70000"], {}, "between 0 and 65535"),
        (["--node", "n", "--bogus"], {}, "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_name_the_flag(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_args(argv, env=env)


def test_a_cgroup_root_that_is_not_there_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from architect.runtime.daemon import main

    assert main(["--node", "n", "--cgroup-root", "/no/such"]) == 2
    assert "--cgroup-root '/no/such': not a directory" in capsys.readouterr().err


def test_main_reports_usage_errors_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from architect.runtime.daemon import main

    assert main(["--node", "n", "--tick", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("architect daemon: --tick '-1'") and "Traceback" not in err
