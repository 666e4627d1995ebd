"""docs/annotations.md, rendered from the annotation table (the one source)."""

from __future__ import annotations

from architect.policy.annotations import ANNOTATIONS, MANAGED_CONTAINERS, MANAGED_POD, PREFIX

_HEADER = f"""# Annotations

Generated from `architect.policy.annotations` by `architect docs --write docs/`; a test
fails when it drifts. All keys are prefixed `{PREFIX}` and set on the pod template.
`architect compile -f FILE` shows the HibernationPolicy / MigrationPolicy they stand for;
`architect validate -f FILE` reports every broken rule, as admission does.

| key | value | default | runtime class | requires |
|---|---|---|---|---|
"""


def annotations_markdown() -> str:
    rows = []
    for a in ANNOTATIONS:
        # Keys that require managed-containers inherit its runc-only rule.
        effective = a.runtime or (
            "runc" if MANAGED_CONTAINERS in a.requires and not a.pod_too else None
        )
        runtime = f"{effective}-architect" if effective else "both"
        requires = ", ".join(f"`{r.removeprefix(PREFIX)}`" for r in a.requires) or "—"
        if a.pod_too:
            requires += f" (runc) or `{MANAGED_POD.removeprefix(PREFIX)}` (runsc)"
        rows.append(
            f"| `{a.short}` | {a.shape.value.replace('|', chr(92) + '|')} | {a.default} "
            f"| {runtime} | {requires} |"
        )
    details = "\n".join(f"- `{a.short}`: {a.summary}" for a in ANNOTATIONS)
    rules = """
## Rules

- Container names must name containers of the pod; all keys but `managed-containers`
  must name managed containers.
- Durations are Go durations (`500ms`, `30s`, `1m30s`, `2h`) greater than 0.
- Ports are integers from 1 to 65535; `appPort` and `shadowPort` differ.
- `health-check-proxy` and `shadow-ports` mappings need a `network-monitor` entry
  for their container.
- An Architect annotation on a pod without runtime class `runc-architect` or
  `runsc-architect`, an unknown key under the prefix, or a workload's pod template
  without labels (the compiled policies select pods by them) is refused.
- A bare Pod without labels is accepted: admission labels it
  `architect.loopholelabs.io/pod=<its name>` (a `generateName` pod: the prefix
  and a random token) and its compiled policies select it by that label; they
  are owned by the Pod and go with it. `architect compile` prints that selector
  and a note.
- Every problem of a workload is reported at once, as `KEY: value 'VALUE': RULE`.
"""
    return _HEADER + "\n".join(rows) + "\n\n## What each key does\n\n" + details + "\n" + rules
