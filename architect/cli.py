"""The `architect` command line (placeholder until the policy CLI lands)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("architect: no command yet", file=sys.stderr)
    return 2
