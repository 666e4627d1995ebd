"""``architect explain pod NAME [-n NS]``: which policy governs each container, why
it is or is not hibernated, and when it next will be.

``explain_pod`` is pure (objects in, text out); ``explain_main`` reads them from
the cluster.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from architect.engine.directives import Conflict, Directive
from architect.engine.evaluate import evaluate
from architect.engine.pods import pod_info, telemetry_from_pod
from architect.policy.models import parse_policies


def _line(d: Directive, conflicts: Sequence[Conflict]) -> list[str]:
    unit = d.key.container or "(whole pod)"
    lines = [f"container {unit}:"]
    lines.append(f"  hibernation: {d.policy or 'none'}")
    lines.append(f"  migration:   {d.migration_policy or 'none'}")
    lines.append(f"  decision:    {d.action.value}: {d.reason}")
    if d.next_at is not None:
        lines.append(f"  next:        {d.next_at.isoformat(timespec='seconds')}")
    for c in conflicts:
        if c.key == d.key:
            lines.append(f"  overrides:   {c.loser} ({c.why})")
    return lines


def explain_pod(
    pod: Mapping[str, Any], policy_objs: Sequence[Mapping[str, Any]], now: datetime
) -> str:
    info = pod_info(pod)
    policies, notes = parse_policies(policy_objs)
    telemetry, tnotes = telemetry_from_pod(pod)
    ev = evaluate(policies, [info], telemetry, now)
    head = f"Pod {info.namespace}/{info.name} (runtimeClassName {info.runtime_class or 'none'})"
    lines = [head]
    for d in ev.directives:
        lines.extend(_line(d, ev.conflicts))
    for n in [*notes, *tnotes]:
        lines.append(f"note: {n}")
    lines.append(
        "note: idle time is counted from the last state change; the daemon's packet and "
        "connection counters are not in the API, so hibernation may come later than shown"
    )
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="architect explain",
        description="Explain which policy governs each container of a pod, and why.",
    )
    ap.add_argument("what", choices=["pod"], help="what to explain (pod)")
    ap.add_argument("name", help="pod name")
    ap.add_argument("-n", "--namespace", default="default")
    ap.add_argument("--kubeconfig", default=None)
    return ap


def explain_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from kubernetes.client.exceptions import ApiException

    from architect.engine.kubeclient import Kube, load_config

    try:
        kube = Kube(load_config(args.kubeconfig))
        pod = kube.core.read_namespaced_pod(args.name, args.namespace)
        pod_obj = kube.core.api_client.sanitize_for_serialization(pod)
        objs: list[dict[str, Any]] = kube.list_policies_sync(args.namespace)
    except ApiException as err:
        what = f"pod {args.namespace}/{args.name}"
        reason = "not found" if err.status == 404 else f"{err.status} {err.reason}"
        print(f"architect explain: {what}: {reason}", file=sys.stderr)
        return 1
    except Exception as err:  # kubeconfig or connection problems: a message, no traceback
        print(f"architect explain: cannot reach the cluster: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(explain_pod(pod_obj, objs, datetime.now(UTC)))
    return 0
