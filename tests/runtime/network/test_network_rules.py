"""Pure tests of the rule builders and plans (no kernel needed)."""

from __future__ import annotations

import re

import pytest

from architect.runtime.network.rules import (
    NetSpec,
    ShadowPort,
    SpecError,
    activity_chain,
    count_packets,
    hold_chain,
    install_plan,
    parse_save,
    removal_plan,
    shadow_chain,
)

SPEC = NetSpec(
    tag="web",
    tcp_ports=(8080, 8443),
    udp_ports=(5353,),
    shadow=(ShadowPort(8080, 9080),),
    exclude_sources=("127.0.0.6/32", "fd00::6/128"),
    queue_num=3,
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tag": "has-dash", "tcp_ports": (80,)}, "tag 'has-dash': must be 1-12 of [A-Za-z0-9_]"),
        ({"tag": "a" * 13, "tcp_ports": (80,)}, "must be 1-12"),
        ({"tag": "a"}, "tag a: no tcp_ports or udp_ports to watch"),
        ({"tag": "a", "tcp_ports": (0,)}, "tcp_ports: port 0 is not an integer in 1..65535"),
        ({"tag": "a", "udp_ports": (70000,)}, "udp_ports: port 70000 is not an integer"),
        ({"tag": "a", "tcp_ports": (80,), "queue_num": 70000}, "queue_num 70000"),
        (
            {"tag": "a", "tcp_ports": (80, 9080), "shadow": (ShadowPort(80, 9080),)},
            "shadow port(s) [9080] are also watched tcp_ports",
        ),
        (
            {"tag": "a", "tcp_ports": (80,), "exclude_sources": ("not-an-ip",)},
            "exclude_sources: 'not-an-ip'",
        ),
    ],
)
def test_spec_errors_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        NetSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tag": "a", "all_ports": True, "tcp_ports": (80,)}, "all_ports watches every port"),
        ({"tag": "a", "tcp_ports": (80,), "except_tcp": (81,)}, "need all_ports"),
        ({"tag": "a", "all_ports": True, "except_udp": (0,)}, "except_udp: port 0"),
    ],
)
def test_all_ports_spec_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        NetSpec(**kwargs)  # type: ignore[arg-type]


ALL = NetSpec(
    tag="c1",
    all_ports=True,
    udp_all=True,
    except_tcp=(8080, 18080),
    except_udp=(53,),
    shadow=(ShadowPort(7070, 9070),),
    queue_num=1,
)


def test_all_ports_hold_chain_excludes_the_others_then_queues_the_rest() -> None:
    c = '-m comment --comment "architect:hold"'
    q = "-j NFQUEUE --queue-num 1 --queue-bypass"
    assert hold_chain(ALL, 4).rules == (
        f"-A ARCHITECT-HOLD-c1 -s 127.0.0.6/32 {c} -j RETURN",
        "-A ARCHITECT-HOLD-c1 -p tcp -m conntrack --ctstate DNAT --ctorigdstport 9070 "
        f"{c} -j REJECT --reject-with tcp-reset",
        f"-A ARCHITECT-HOLD-c1 -p tcp -m multiport --dports 8080,18080 {c} -j RETURN",
        f"-A ARCHITECT-HOLD-c1 -p udp -m multiport --dports 53 {c} -j RETURN",
        # Only flows started from outside: replies to the pod's own connections pass.
        f"-A ARCHITECT-HOLD-c1 -p tcp -m conntrack --ctdir ORIGINAL {c} {q}",
        f"-A ARCHITECT-HOLD-c1 -p udp -m conntrack --ctdir ORIGINAL {c} {q}",
    )


def test_all_ports_activity_chain_counts_only_the_catch_all() -> None:
    rules = activity_chain(ALL, 4).rules
    counted = [r for r in rules if "architect:count" in r]
    assert counted == [
        "-A ARCHITECT-ACT-c1 -p tcp -m conntrack --ctdir ORIGINAL "
        '-m comment --comment "architect:count" -j RETURN',
        "-A ARCHITECT-ACT-c1 -p udp -m conntrack --ctdir ORIGINAL "
        '-m comment --comment "architect:count" -j RETURN',
    ]
    # The excluded ports and the shadow flow RETURN before, uncounted.
    first_count = rules.index(counted[0])
    assert any("--dports 8080,18080" in r for r in rules[:first_count])
    assert any("--ctorigdstport 9070" in r for r in rules[:first_count])


def test_all_ports_tcp_only_and_many_exclusions() -> None:
    spec = NetSpec(tag="c0", all_ports=True, except_tcp=tuple(range(1000, 1020)))
    rules = hold_chain(spec, 4).rules
    assert not any("-p udp" in r for r in rules)
    returns = [r for r in rules if "--dports" in r]
    assert len(returns) == 2  # xt_multiport takes 15 ports a rule
    assert rules[-1].startswith("-A ARCHITECT-HOLD-c0 -p tcp -m conntrack --ctdir ORIGINAL")


def test_shadow_port_equal_to_app_port_is_refused() -> None:
    with pytest.raises(SpecError, match="appPort equals shadowPort"):
        ShadowPort(80, 80)


def test_hold_chain_v4() -> None:
    ch = hold_chain(SPEC, 4)
    assert (ch.table, ch.name, ch.jumps_from) == ("filter", "ARCHITECT-HOLD-web", ("INPUT",))
    c = '-m comment --comment "architect:hold"'
    assert ch.rules == (
        f"-A ARCHITECT-HOLD-web -s 127.0.0.6/32 {c} -j RETURN",
        "-A ARCHITECT-HOLD-web -p tcp -m conntrack --ctstate DNAT --ctorigdstport 9080 "
        f"{c} -j REJECT --reject-with tcp-reset",
        f"-A ARCHITECT-HOLD-web -p tcp -m multiport --dports 8080,8443 {c} "
        "-j NFQUEUE --queue-num 3 --queue-bypass",
        f"-A ARCHITECT-HOLD-web -p udp -m multiport --dports 5353 {c} "
        "-j NFQUEUE --queue-num 3 --queue-bypass",
    )


def test_v6_chains_take_only_v6_exclusions() -> None:
    assert "-s fd00::6/128" in hold_chain(SPEC, 6).rules[0]
    assert not any("127.0.0.6" in r for r in hold_chain(SPEC, 6).rules)
    assert not any("fd00::6" in r for r in activity_chain(SPEC, 4).rules)


def test_every_queue_rule_fails_open() -> None:
    for fam in (4, 6):
        queued = [r for r in hold_chain(SPEC, fam).rules if "NFQUEUE" in r]
        assert queued and all(r.endswith("--queue-bypass") for r in queued)


def test_many_ports_are_split_by_multiport_limit() -> None:
    spec = NetSpec(tag="m", tcp_ports=tuple(range(1000, 1020)))
    queued = [r for r in hold_chain(spec, 4).rules if "NFQUEUE" in r]
    assert len(queued) == 2
    assert "--dports 1000,1001" in queued[0] and "--dports 1015,1016,1017,1018,1019" in queued[1]


def test_activity_chain_skips_shadow_and_excluded_then_counts() -> None:
    rules = activity_chain(SPEC, 4).rules
    assert [("architect:count" in r) for r in rules] == [False, False, True, True]
    assert "--ctorigdstport 9080" in rules[1]
    assert all("--ctdir ORIGINAL" in r for r in rules[2:])


def test_shadow_chain_redirects_tcp_and_is_absent_without_shadows() -> None:
    ch = shadow_chain(SPEC, 4)
    assert ch is not None and ch.table == "nat" and ch.jumps_from == ("PREROUTING", "OUTPUT")
    assert ch.rules == (
        '-A ARCHITECT-SHD-web -p tcp --dport 9080 -m comment --comment "architect:shadow" '
        "-j REDIRECT --to-ports 8080",
    )
    assert shadow_chain(NetSpec(tag="n", tcp_ports=(80,)), 4) is None


SAVED = """# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ARCHITECT-HOLD-web - [0:0]
:OTHER - [0:0]
[7:420] -A INPUT -m comment --comment "architect:hold" -j ARCHITECT-HOLD-web
[1:60] -A INPUT -j OTHER
[3:180] -A ARCHITECT-HOLD-web -p tcp -m multiport --dports 8080 -j NFQUEUE --queue-num 3
COMMIT
*mangle
:INPUT ACCEPT [0:0]
:ARCHITECT-ACT-web - [0:0]
[9:1] -A INPUT -j ARCHITECT-ACT-web
[2:1] -A ARCHITECT-ACT-web -s 127.0.0.6/32 -m comment --comment "architect:activity" -j RETURN
[5:1] -A ARCHITECT-ACT-web -p tcp -m comment --comment "architect:count" -j RETURN
[4:1] -A ARCHITECT-ACT-web -p udp -m comment --comment "architect:count" -j RETURN
COMMIT
"""


def test_parse_save_reads_chains_rules_and_counters() -> None:
    t = parse_save(SAVED)
    assert t["filter"].chains == ["INPUT", "FORWARD", "OUTPUT", "ARCHITECT-HOLD-web", "OTHER"]
    assert t["filter"].rules[0] == (
        "INPUT",
        '-A INPUT -m comment --comment "architect:hold" -j ARCHITECT-HOLD-web',
    )
    assert count_packets(t, "ARCHITECT-ACT-web") == 9  # only the architect:count rules
    assert count_packets(t, "ARCHITECT-ACT-nope") == 0


def test_install_plan_declares_chains_and_adds_only_missing_jumps() -> None:
    saved = parse_save(SAVED)
    plan = install_plan([hold_chain(SPEC, 4), activity_chain(SPEC, 4)], saved)
    lines = plan.splitlines()
    assert ":ARCHITECT-HOLD-web - [0:0]" in lines and ":ARCHITECT-ACT-web - [0:0]" in lines
    # both jumps exist already: none is added again
    assert not [ln for ln in lines if ln.startswith("-I ")]
    fresh = install_plan([hold_chain(SPEC, 4)], {}).splitlines()
    assert fresh[-2] == '-I INPUT 1 -m comment --comment "architect:hold" -j ARCHITECT-HOLD-web'
    assert fresh[0] == "*filter" and fresh[-1] == "COMMIT"


def test_removal_plan_deletes_jumps_then_chains_and_is_empty_when_clean() -> None:
    plan = removal_plan(parse_save(SAVED))
    assert plan.splitlines() == [
        "*filter",
        '-D INPUT -m comment --comment "architect:hold" -j ARCHITECT-HOLD-web',
        "-F ARCHITECT-HOLD-web",
        "-X ARCHITECT-HOLD-web",
        "COMMIT",
        "*mangle",
        "-D INPUT -j ARCHITECT-ACT-web",
        "-F ARCHITECT-ACT-web",
        "-X ARCHITECT-ACT-web",
        "COMMIT",
    ]
    only_hold = removal_plan(parse_save(SAVED), ["ARCHITECT-HOLD-web"])
    assert "mangle" not in only_hold and "-X ARCHITECT-HOLD-web" in only_hold
    assert removal_plan(parse_save(SAVED), ["ARCHITECT-HOLD-gone"]) == ""
    assert "OTHER" not in plan


def test_hold_moves_above_criu_network_lock() -> None:
    from architect.runtime.network.rules import hold_first_plan, parse_save

    hold = '-A INPUT -m comment --comment "architect:hold" -j ARCHITECT-HOLD-c0'
    saved = parse_save(
        "*filter\n:INPUT ACCEPT [0:0]\n:ARCHITECT-HOLD-c0 - [0:0]\n:CRIU - [0:0]\n"
        f"-A INPUT -j CRIU\n{hold}\n-A CRIU -j DROP\nCOMMIT\n"
    )
    assert hold_first_plan(saved, "ARCHITECT-HOLD-c0") == (
        "*filter\n"
        '-D INPUT -m comment --comment "architect:hold" -j ARCHITECT-HOLD-c0\n'
        '-I INPUT 1 -m comment --comment "architect:hold" -j ARCHITECT-HOLD-c0\n'
        "COMMIT\n"
    )
    first = parse_save(f"*filter\n:INPUT ACCEPT [0:0]\n{hold}\n-A INPUT -j CRIU\nCOMMIT\n")
    assert hold_first_plan(first, "ARCHITECT-HOLD-c0") == ""
    assert hold_first_plan(first, "ARCHITECT-HOLD-c9") == ""
    assert hold_first_plan({}, "ARCHITECT-HOLD-c0") == ""
