"""The ``architect`` command line: wiring only; each command lives in its layer.

Exit codes: 0 success, 1 the input has problems (each printed on stderr with
its place), 2 the command line itself is wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from architect.policy import commands


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="architect",
        description="Hibernate idle Kubernetes containers and wake them on demand.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "compile",
        help="compile workload annotations into HibernationPolicy / MigrationPolicy",
        description="Print the policies the Architect annotations of each Pod or workload "
        "in FILE stand for. Workloads without Architect annotations compile to nothing.",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML file (several documents allowed); - reads stdin",
    )

    p = sub.add_parser(
        "validate",
        help="check Architect objects against the CRDs' schema and CEL rules offline",
        description="Validate HibernationPolicy, MigrationPolicy, Checkpoint and "
        "PersistentCheckpoint objects as the API server would, and the Architect annotations "
        "of Pods and workloads. Other kinds are skipped.",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML file (several documents allowed); - reads stdin",
    )

    p = sub.add_parser("crds", help="print the CustomResourceDefinitions")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="DIR", help="write one file per CRD into DIR")
    group.add_argument(
        "--check",
        type=Path,
        metavar="DIR",
        help="exit 1 when the CRDs in DIR differ from what the models generate",
    )

    p = sub.add_parser("docs", help="write the generated reference pages (docs/annotations.md)")
    p.add_argument("--write", type=Path, metavar="DIR", required=True)

    p = sub.add_parser("explain", help="explain which policy governs a pod's containers, and why")
    p.add_argument("what", choices=["pod"])
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("--kubeconfig", default=None)

    sub.add_parser("health-proxy", help="run the health-check proxy sidecar", add_help=False)
    sub.add_parser("operator", help="run the admission webhooks and control plane", add_help=False)
    sub.add_parser("daemon", help="run the per-node daemon (hibernate, wake, resize, migrate)",
                   add_help=False)
    sub.add_parser("node", help="install or remove the shim and its containerd handlers on "
                   "this node (what the chart's init container runs)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The sidecar parses its own flags; hand them over untouched.
    if args_list[:1] == ["health-proxy"]:
        from architect.runtime.network.healthproxy import main as health_proxy_main

        return int(health_proxy_main(args_list[1:]))
    if args_list[:1] == ["operator"]:
        from architect.engine.serve import main as operator_main

        return int(operator_main(args_list[1:]))
    if args_list[:1] == ["daemon"]:
        from architect.runtime.daemon.wiring import main as daemon_main

        return int(daemon_main(args_list[1:]))
    if args_list[:1] == ["node"]:
        from architect.runtime.shim.nodeinstall import main as node_main

        return int(node_main(args_list[1:]))
    args = _parser().parse_args(args_list)
    try:
        if args.command == "compile":
            return commands.compile_files(args.filename, sys.stdout, sys.stderr)
        if args.command == "validate":
            return commands.validate_files(args.filename, sys.stdout, sys.stderr)
        if args.command == "crds":
            return commands.crds(args.write, args.check, sys.stdout, sys.stderr)
        if args.command == "docs":
            from architect.policy.docs import annotations_markdown

            args.write.mkdir(parents=True, exist_ok=True)
            (args.write / "annotations.md").write_text(annotations_markdown(), encoding="utf-8")
            return 0
        if args.command == "explain":
            from architect.engine.explain import explain_main

            rest = [args.what, args.name]
            if args.namespace:
                rest += ["-n", args.namespace]
            if args.kubeconfig:
                rest += ["--kubeconfig", args.kubeconfig]
            return int(explain_main(rest))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
