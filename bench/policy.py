"""Policy API throughput: workloads compiled and validated per second, CEL time per rule.

Run: python bench/policy.py [--workloads N]
Figures are for this machine in this run; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

from celpy.adapter import json_to_cel

from architect.policy.compiler import compile_workload
from architect.policy.crdgen import openapi_schema
from architect.policy.models import BY_KIND
from architect.policy.validation import _compile, apply_defaults, validate_object
from architect.policy.yamlio import load_documents

ROOT = Path(__file__).resolve().parents[1]


def _workloads(n: int) -> list[dict[str, Any]]:
    base = load_documents((ROOT / "samples/multi-container.yaml").read_text(), "s")[0].obj
    out = []
    for i in range(n):
        w = copy.deepcopy(base)
        w["metadata"]["name"] = f"shop-{i}"
        out.append(w)
    return out


def _rules_with_self(obj: dict[str, Any]) -> list[tuple[str, str, str, Any]]:
    """(kind, rule, message, value of self) for every rule on an object's path."""
    found: list[tuple[str, str, str, Any]] = []

    def walk(schema: dict[str, Any], value: Any) -> None:
        for entry in schema.get("x-kubernetes-validations", ()):
            found.append((obj["kind"], entry["rule"], entry["message"], value))
        if isinstance(value, dict):
            for name, sub in schema.get("properties", {}).items():
                if name in value:
                    walk(sub, value[name])
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for item in value[:1]:
                walk(schema["items"], item)

    schema = openapi_schema(BY_KIND[obj["kind"]])
    walk(schema, apply_defaults(schema, copy.deepcopy(obj)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workloads", type=int, default=500)
    args = parser.parse_args()
    workloads = _workloads(args.workloads)

    t0 = time.perf_counter()
    compiled = [p.to_dict() for w in workloads for p in compile_workload(w)]
    t_compile = time.perf_counter() - t0

    validate_object(compiled[0])  # warm: CEL programs compile once per process
    t0 = time.perf_counter()
    for obj in compiled:
        assert validate_object(obj) == []
    t_validate = time.perf_counter() - t0

    print(f"workloads: {len(workloads)} (samples/multi-container.yaml, 3 managed containers)")
    print(f"compile:  {len(workloads) / t_compile:10.0f} workloads/s")
    print(f"validate: {len(compiled) / t_validate:10.0f} policies/s "
          f"({len(workloads) / t_validate:.0f} workloads/s, 2 policies each)")
    print(f"compile+validate: {len(workloads) / (t_compile + t_validate):.0f} workloads/s")
    print()
    print("| kind | rule message | µs per evaluation |")
    print("|---|---|---|")
    for kind, rule, message, value in _rules_with_self(compiled[0]) + _rules_with_self(compiled[1]):
        program = _compile(rule, message, "").program
        activation = {"self": json_to_cel(value)}
        reps = 300
        t0 = time.perf_counter()
        for _ in range(reps):
            program.evaluate(activation)
        print(f"| {kind} | {message} | {(time.perf_counter() - t0) / reps * 1e6:.0f} |")


if __name__ == "__main__":
    main()
