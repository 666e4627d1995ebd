"""Remove the iptables rules CNI plugins made for one network (used by e2e/cluster/down).

    python3 iptables_cleanup.py NETWORK

CNI's bridge and portmap plugins tag their rules with a comment naming the network
(`name: "NETWORK"`). Those rules go; so do the per-container chains they jump to,
and the shared CNI-HOSTPORT-* chains once no per-container chain is left.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass

TABLES = ("nat", "filter")
SHARED_PREFIX = "CNI-HOSTPORT-"


@dataclass(frozen=True)
class Rule:
    chain: str
    args: tuple[str, ...]  # everything after "-A CHAIN"

    @property
    def target(self) -> str | None:
        for flag in ("-j", "-g"):
            if flag in self.args:
                i = self.args.index(flag)
                if i + 1 < len(self.args):
                    return self.args[i + 1]
        return None


def parse(save_output: str) -> tuple[list[str], list[Rule]]:
    """Chains and rules of one table from `iptables-save -t TABLE` output."""
    chains: list[str] = []
    rules: list[Rule] = []
    for line in save_output.splitlines():
        if line.startswith(":"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            parts = shlex.split(line)
            rules.append(Rule(parts[1], tuple(parts[2:])))
    return chains, rules


def plan(chains: list[str], rules: list[Rule], network: str) -> tuple[list[Rule], list[str]]:
    """Pure: which rules to delete and which chains to remove, in a safe order."""
    tag = f'name: "{network}"'
    doomed_rules = [r for r in rules if any(tag in a for a in r.args)]
    doomed_chains = {r.target for r in doomed_rules if r.target and r.target.startswith("CNI-")}
    doomed_chains = {c for c in doomed_chains if c in chains and not c.startswith(SHARED_PREFIX)}
    # Rules inside doomed chains go with the chain (flush), not one by one.
    doomed_rules = [r for r in doomed_rules if r.chain not in doomed_chains]
    remaining = [r for r in rules if r not in doomed_rules and r.chain not in doomed_chains]
    # Shared portmap chains serve only per-container CNI-DN-* chains; once none is
    # left (ours are going, nobody else's exist) they are inert and portmap
    # recreates them on its next use, so they go too.
    if not any(c.startswith("CNI-DN-") and c not in doomed_chains for c in chains):
        shared = {c for c in chains if c.startswith(SHARED_PREFIX)}
        jumps = [r for r in remaining if r.target in shared and r.chain not in shared]
        doomed_rules.extend(jumps)
        doomed_chains |= shared
    return doomed_rules, sorted(doomed_chains)


def _ipt(table: str, *args: str) -> None:
    subprocess.run(["iptables", "-w", "-t", table, *args], check=False, capture_output=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: iptables_cleanup.py NETWORK", file=sys.stderr)
        return 2
    network = argv[1]
    for table in TABLES:
        out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True,
                             check=False).stdout
        rules, chains = plan(*parse(out), network)
        for rule in rules:
            _ipt(table, "-D", rule.chain, *rule.args)
        for chain in chains:
            _ipt(table, "-F", chain)
        for chain in chains:
            _ipt(table, "-X", chain)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
