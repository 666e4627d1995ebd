"""What a migration does per container, by the four per-container annotations
(pure: plan and podinfo, no containerd). Every default is the seed's: none listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from architect.policy import annotations as keys
from architect.runtime.checkpoint import Scope
from architect.runtime.checkpoint import image as ckpt_image
from architect.runtime.shim import plan, podinfo, process, service
from architect.runtime.shim.events import Publisher, PublishTarget
from architect.runtime.shim.reaper import Reaper
from architect.runtime.shim.runtimeconfig import RuntimeConfig

ANN = {plan.ANN_TEMPLATE_HASH: "5d9c", plan.CRI_CONTAINER_NAME: "app"}


def test_annotation_keys_are_the_policy_tables() -> None:
    assert plan.ANN_MIGRATE_EMPTYDIR == keys.MIGRATE_EMPTYDIR
    assert plan.ANN_AUTOSCALEUP == keys.POSTMIGRATION_AUTOSCALEUP
    assert plan.ANN_REWRITE_LISTENER == keys.REWRITE_LISTENER
    assert plan.ANN_REWRITE_ESTABLISHED == keys.REWRITE_ESTABLISHED


def test_defaults_are_none_listed() -> None:
    assert plan.migration_choices({}, "app") == plan.MigrationChoices(
        empty_dirs=False, wake=False, rewrite_listeners=False, rewrite_established=False
    )


@pytest.mark.parametrize(
    ("key", "field"),
    [
        (keys.MIGRATE_EMPTYDIR, "empty_dirs"),
        (keys.POSTMIGRATION_AUTOSCALEUP, "wake"),
        (keys.REWRITE_LISTENER, "rewrite_listeners"),
        (keys.REWRITE_ESTABLISHED, "rewrite_established"),
    ],
)
def test_each_annotation_turns_on_its_own_choice_for_listed_containers(
    key: str, field: str
) -> None:
    ann = {key: json.dumps(["app", "side"])}
    on = plan.migration_choices(ann, "app")
    assert getattr(on, field) is True
    others = {"empty_dirs", "wake", "rewrite_listeners", "rewrite_established"} - {field}
    assert not any(getattr(on, f) for f in others)
    assert getattr(plan.migration_choices(ann, "worker"), field) is False


def test_malformed_annotation_reads_as_default_and_is_named() -> None:
    ann = {keys.POSTMIGRATION_AUTOSCALEUP: "app", keys.MIGRATE_EMPTYDIR: '{"app": 1}',
           keys.REWRITE_LISTENER: '["app"]'}
    ch = plan.migration_choices(ann, "app")
    assert (ch.wake, ch.empty_dirs, ch.rewrite_listeners) == (False, False, True)
    assert len(ch.problems) == 2
    assert any(keys.POSTMIGRATION_AUTOSCALEUP in p and "not JSON" in p for p in ch.problems)
    assert any(keys.MIGRATE_EMPTYDIR in p and "JSON list" in p for p in ch.problems)


def _ready(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / plan.NAMESPACE_MARK).write_text("")  # these pods name no namespace
    (d / plan.READY_MARK).touch()
    return d


def test_a_handover_stays_hibernated_unless_autoscaleup_lists_it(tmp_path: Path) -> None:
    d = _ready(plan.handover_dir(tmp_path, "5d9c", "app", plan.source_slot("", "old")))
    p = plan.plan_start("runc", ANN, tmp_path, None)
    assert (p.path, p.image, p.wake, p.handover) == ("restore", d, False, True)
    listed = {**ANN, keys.POSTMIGRATION_AUTOSCALEUP: '["app"]'}
    p = plan.plan_start("runc", listed, tmp_path, None)
    assert (p.path, p.wake, p.handover) == ("restore", True, True)
    other = {**ANN, keys.POSTMIGRATION_AUTOSCALEUP: '["web"]'}
    assert plan.plan_start("runc", other, tmp_path, None).wake is False
    # A pending handover is planned alike.
    (d / plan.READY_MARK).unlink()
    (d / plan.PENDING_MARK).touch()
    assert plan.plan_start("runc", ANN, tmp_path, None).wake is False


def test_own_hibernation_image_is_no_handover(tmp_path: Path) -> None:
    """The shim died while the container was hibernated: its own image restores
    (it runs again, as before), and no emptyDir comes out of it."""
    own = _ready(tmp_path / "own")
    _ready(plan.handover_dir(tmp_path, "5d9c", "app", plan.source_slot("", "old")))
    p = plan.plan_start("runc", ANN, tmp_path, own)
    assert (p.image, p.wake, p.handover) == (own, True, False)


def test_persistent_checkpoint_restores_and_runs(tmp_path: Path) -> None:
    ann = {plan.ANN_PERSISTENT: "warm", plan.CRI_SANDBOX_NAMESPACE: "ns"}
    d = _ready(tmp_path / "persistent" / "ns" / "warm")
    (d / "manifest.json").write_text("{}")
    plan.write_grant(d, "ns", [], plan.manifest_digest(d))
    p = plan.plan_start("runsc", ann, tmp_path, None)
    assert (p.path, p.wake, p.handover, p.consume) == ("restore", True, True, False)


# -- the new pod IP, from /etc/hosts (seed: rewrite-established-addresses-containers) ----

KUBELET_HOSTS = """# Kubernetes-managed hosts file.
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
10.244.0.17\tcounter-7d9c-abcde
fd00:10:244::11\tcounter-7d9c-abcde

# Entries added by HostAliases.
192.0.2.10\tdb.example
"""


def test_pod_ips_from_kubelets_hosts_file() -> None:
    assert podinfo.parse_hosts(KUBELET_HOSTS, "counter-7d9c-abcde") == (
        "10.244.0.17", "fd00:10:244::11")
    # Without the hostname: every global address before the hostAliases section.
    assert podinfo.parse_hosts(KUBELET_HOSTS) == ("10.244.0.17", "fd00:10:244::11")
    subdomain = "10.244.0.9\tweb-0.web.ns.svc.cluster.local\tweb-0\n10.1.1.1\tother\n"
    assert podinfo.parse_hosts(subdomain, "web-0") == ("10.244.0.9",)
    assert podinfo.parse_hosts("127.0.0.1 localhost\n") == ()
    assert podinfo.parse_hosts("garbage\nnot-an-ip name\n") == ()


def test_hosts_file_from_the_spec(tmp_path: Path) -> None:
    hosts = tmp_path / "etc-hosts"
    hosts.write_text(KUBELET_HOSTS)
    spec = {"hostname": "counter-7d9c-abcde",
            "mounts": [{"destination": "/data", "source": "/x"},
                       {"destination": "/etc/hosts", "source": str(hosts)}]}
    assert podinfo.hosts_file(spec) == hosts
    assert podinfo.hosts_addresses(spec) == ("10.244.0.17", "fd00:10:244::11")
    assert podinfo.hosts_addresses({}) == ()
    gone = {"mounts": [{"destination": "/etc/hosts", "source": str(tmp_path / "gone")}]}
    assert podinfo.hosts_addresses(gone) == ()


# -- the shim's use of the choices (a TaskService, no runc or CRIU run) -----------------


def _svc_container(
    tmp_path: Path, ann: dict[str, str]
) -> tuple[service.TaskService, process.Container, tuple[Path, ...]]:
    vols = tuple(tmp_path / "pod" / "volumes" / "kubernetes.io~empty-dir" / n
                 for n in ("data", "cache"))
    hosts = tmp_path / "pod" / "etc-hosts"
    hosts.parent.mkdir(parents=True)
    hosts.write_text(KUBELET_HOSTS)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    mounts = [{"destination": f"/{v.name}", "source": str(v)} for v in vols]
    mounts.append({"destination": "/etc/hosts", "source": str(hosts)})
    (bundle / "config.json").write_text(json.dumps({"mounts": mounts}))
    reaper = Reaper()
    svc = service.TaskService(reaper, Publisher(reaper, PublishTarget("true", "", "k8s.io")),
                              "k8s.io", tmp_path / "state", tmp_path / "runc")
    init = process.Proc("", "", "", "", False)
    c = process.Container("c1", bundle, svc.runc(RuntimeConfig()), {**ANN, **ann}, init,
                          tmp_path / "c1")
    return svc, c, vols


def _image(tmp_path: Path, addresses: tuple[str, ...]) -> Path:
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "core-1.img").write_bytes(b"core")
    out = tmp_path / "image"
    ckpt_image.pack(out, engine, (), backend="runc-criu", backend_version="t",
                    scope=Scope.CONTAINER, container="c1", pod_template_hash="5d9c",
                    memory_bytes=0, addresses=addresses)
    return out


@pytest.mark.parametrize(
    ("ann", "want"),
    [
        ({}, []),
        ({keys.REWRITE_LISTENER: '["app"]'}, [("10.244.0.5", "10.244.0.17", True, False)]),
        ({keys.REWRITE_ESTABLISHED: '["app"]'}, [("10.244.0.5", "10.244.0.17", False, True)]),
        ({keys.REWRITE_LISTENER: '["app"]', keys.REWRITE_ESTABLISHED: '["app"]'},
         [("10.244.0.5", "10.244.0.17", True, True)]),
        ({keys.REWRITE_LISTENER: '["web"]', keys.REWRITE_ESTABLISHED: '["web"]'}, []),
    ],
)  # fmt: skip
async def test_restore_rewrites_only_what_is_listed_to_the_ip_in_etc_hosts(
    tmp_path: Path, ann: dict[str, str], want: list[tuple[str, str, bool, bool]]
) -> None:
    svc, c, _ = _svc_container(tmp_path, ann)
    image = _image(tmp_path, ("10.244.0.5",))
    got = await svc.lifecycle.rewrites(c, image)
    assert [(str(r.old), str(r.new), r.listeners, r.established) for r in got] == want


async def test_a_local_wake_rewrites_nothing(tmp_path: Path) -> None:
    both = {keys.REWRITE_LISTENER: '["app"]', keys.REWRITE_ESTABLISHED: '["app"]'}
    svc, c, _ = _svc_container(tmp_path, both)
    assert await svc.lifecycle.rewrites(c, _image(tmp_path, ("10.244.0.17",))) == ()


@pytest.mark.parametrize("opted_in", [False, True])
def test_empty_dirs_travel_and_arrive_only_when_opted_in(tmp_path: Path, opted_in: bool) -> None:
    svc, c, vols = _svc_container(
        tmp_path, {keys.MIGRATE_EMPTYDIR: '["app"]' if opted_in else '["other"]'}
    )
    assert svc.lifecycle.travelling_dirs(c) == (vols if opted_in else ())
    handover = plan.StartPlan("restore", "handover", tmp_path / "h", handover=True)
    assert svc.lifecycle.arriving_dirs(c, handover) == (vols if opted_in else None)
    # Its own hibernation image: the volumes never left the node, none come out.
    own = plan.StartPlan("restore", "own hibernation image", tmp_path / "own")
    assert svc.lifecycle.arriving_dirs(c, own) is None
