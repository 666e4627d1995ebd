"""Unit tests of the CNI iptables cleanup plan (pure: parses iptables-save text)."""

from __future__ import annotations

from e2e.cluster.iptables_cleanup import parse, plan

SAVE = """\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-DN-aaa - [0:0]
:CNI-DN-bbb - [0:0]
:ARCHITECT-E2E - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A PREROUTING -j ARCHITECT-E2E
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"architect-e2e\\" id: \\"c1\\"" -m multiport --dports 8080 -j CNI-DN-aaa
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"other-net\\" id: \\"c2\\"" -m multiport --dports 9090 -j CNI-DN-bbb
-A CNI-DN-aaa -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.244.0.5:80
-A CNI-DN-bbb -p tcp -m tcp --dport 9090 -j DNAT --to-destination 10.99.0.5:80
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
COMMIT
"""


def test_parse_keeps_quoted_comments_as_one_argument() -> None:
    chains, rules = parse(SAVE)
    assert "CNI-DN-aaa" in chains
    tagged = [r for r in rules if r.target == "CNI-DN-aaa"]
    assert len(tagged) == 1
    assert 'dnat name: "architect-e2e" id: "c1"' in tagged[0].args


def test_only_our_networks_rules_and_chains_go() -> None:
    rules, chains = plan(*parse(SAVE), "architect-e2e")
    assert [(r.chain, r.target) for r in rules] == [("CNI-HOSTPORT-DNAT", "CNI-DN-aaa")]
    assert chains == ["CNI-DN-aaa"]  # the other network's chain and shared chains stay


def test_shared_portmap_chains_go_once_no_container_chain_is_left() -> None:
    only_ours = "\n".join(line for line in SAVE.splitlines()
                          if "other-net" not in line and "CNI-DN-bbb" not in line)
    rules, chains = plan(*parse(only_ours), "architect-e2e")
    assert set(chains) == {"CNI-DN-aaa", "CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ"}
    targets = {(r.chain, r.target) for r in rules}
    assert ("PREROUTING", "CNI-HOSTPORT-DNAT") in targets
    assert ("POSTROUTING", "CNI-HOSTPORT-MASQ") in targets
    assert ("PREROUTING", "ARCHITECT-E2E") not in targets  # `down` removes its own chain itself


def test_shared_chains_stay_while_another_network_uses_them() -> None:
    _, chains = plan(*parse(SAVE), "architect-e2e")
    assert not any(c.startswith("CNI-HOSTPORT-") for c in chains)


def test_nothing_of_ours_means_nothing_removed() -> None:
    assert plan(*parse(SAVE), "absent-net") == ([], [])
