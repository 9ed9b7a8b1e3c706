"""The decide stage (rules.match) on hostile and mangled traffic, every layer on.

One policy turns on every layer and option (network ACL, security group, DNS
Firewall, stateless rules with TCP flags, stateful rules of every kind including
resolved-domain and name rules, ECH and SNI-resolution checks, IPv6 egress-only).
Real-client captures, the samples and the malformed capture go through it whole, and
hypothesis mangles their inner bytes (names, lengths, DNS answers) and splits them
into random batch sizes.  Whatever the input: every row ends PASS or DROP, a drop has
a reason and a pass none, rule and alert ids are in the catalog, nothing raises.
test_boundscheck reruns this module with NUMBA_BOUNDSCHECK=1.
"""
from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PCAPS
from gwlb import write_pcap

from egressd.engine.flows import FlowConfig
from egressd.engine.pcapio import CaptureReader
from egressd.engine.pipeline import Pipeline
from egressd.engine.reasons import Reason, Verdict
from egressd.rules import domains
from egressd.rules.addr import ADDR_MAX, cidrs, complement
from egressd.rules.compile import CompiledPolicy, compile_policy
from egressd.rules.policy import (CONTAINS, SUFFIX, DnsRule, DomainSet, Match, NaclRule, NameCond,
                                  Options, Origin, Pattern, Policy, SgRule, StatefulGroup,
                                  StatefulRule, StatelessGroup, StatelessRule)

SCALE = float(os.environ.get("EGRESSD_FUZZ_SCALE", "1"))
CAPTURES = sorted(PCAPS.glob("*.pcap")) + sorted((PCAPS / "clients").glob("*.pcap"))


def _o(layer: str, ident: str) -> Origin:
    return Origin(layer, "fuzz", ident)


@cache
def policy() -> CompiledPolicy:
    home = cidrs(["10.0.0.0/8", "fd00::/8"])
    ext = complement(home, ADDR_MAX)
    names = DomainSet(tuple(domains.aws_target(t) for t in (".example.com", "shop.example.test",
                                                              ".chromium.example.test")))
    odd = DomainSet((Pattern(SUFFIX, b"ample.net"), Pattern(CONTAINS, b"legacy")))
    tcp, udp = frozenset({6}), frozenset({17})
    anym = Match()
    stateful = [
        StatefulRule("alert", Match(protocols=udp), _o("stateful", "1"), app="dns",
                     names=(NameCond("dns.query", odd),), sid=1),
        StatefulRule("pass", Match(protocols=tcp, src=home, dst=ext), _o("stateful", "2"), app="tls",
                     flow_dir="to_server", established=True, names=(NameCond("tls.sni", names),), sid=2),
        StatefulRule("reject", Match(protocols=tcp, src=home, dst=ext), _o("stateful", "3"),
                     app="http", names=(NameCond("http.host", odd, negated=True),), sid=3),
        StatefulRule("pass", Match(protocols=tcp, dport=((22, 22),)), _o("stateful", "4"),
                     resolved=names, sid=4),
        StatefulRule("drop", Match(protocols=udp, dport=((443, 443),)), _o("stateful", "5"), app="quic",
                     names=(NameCond("tls.sni", odd),), sid=5),
        StatefulRule("drop", Match(protocols=tcp, src=home, dst=ext), _o("stateful", "6"), app="tls",
                     flow_dir="to_server", established=True, sid=6),
    ]
    p = Policy(
        home_net=home,
        nacl=[NaclRule(100, "outbound", True, anym, _o("nacl", "100")),
              NaclRule(90, "inbound", False, Match(protocols=frozenset({1}), src=cidrs(["192.0.2.0/24"])),
                       _o("nacl", "90")),
              NaclRule(200, "inbound", True, anym, _o("nacl", "200"))],
        sg_egress=None, sg_ingress=[SgRule("ingress", Match(protocols=tcp, dport=((80, 80),)),
                                           _o("security_group", "in80"))],
        security_group=True,
        dns_firewall=[DnsRule(10, odd, "alert", origin=_o("dns_firewall", "10")),
                      DnsRule(20, DomainSet((domains.aws_target("blocked.example.com"),)), "block",
                              "nxdomain", origin=_o("dns_firewall", "20"))],
        stateless=[StatelessGroup("sl", 1, [
            StatelessRule(1, Match(protocols=tcp, tcp_flags=0x02, tcp_mask=0x12, dport=((25, 25),)), "drop",
                          _o("stateless", "1")),
            StatelessRule(2, Match(protocols=frozenset({58})), "pass", _o("stateless", "2"))])],
        stateless_default="forward", stateless_fragment_default="forward",
        stateful=[StatefulGroup("sf", 1, stateful)],
        rule_order="strict_order", stateful_defaults=("drop_established", "alert_strict"),
        options=Options(ech="alert", sni_resolution="drop", ipv6_egress_only=True, quic_as_tls=False,
                        name_wait_packets=3, name_wait_bytes=2000))
    return compile_policy(p)


def run(path: Path, batch: int) -> None:
    cp = policy()
    pipe = Pipeline(flows=FlowConfig(capacity=256), policy=cp)
    n_cat = len(cp.catalog)
    with CaptureReader(path, batch_packets=batch, extra_bytes=pipe.extra_bytes) as reader:
        for b in reader:
            pipe.process(b, reader.extra_base)
            v, why = b.verdict[:b.n], b.reason[:b.n]
            assert np.isin(v, (Verdict.PASS, Verdict.DROP)).all()
            assert ((v == Verdict.PASS) == (why == Reason.OK)).all()
            assert ((b.rule[:b.n] >= -1) & (b.rule[:b.n] < n_cat)).all()
            assert ((b.alert[:b.n] >= -1) & (b.alert[:b.n] < n_cat)).all()
    pipe.finish()


def test_every_capture_whole() -> None:
    for path in CAPTURES:
        for batch in (1, 7, 4096):
            run(path, batch)


@cache
def frames() -> list[bytes]:
    out = []
    for path in CAPTURES:
        with CaptureReader(path) as reader:
            for b in reader:
                out += [b.frame(i) for i in range(b.n)]
    return out


@settings(max_examples=max(10, int(150 * SCALE)), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_mangled_traffic(data: st.DataObject) -> None:
    pool = frames()
    picks = data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=60))
    out = []
    for k in picks:
        f = bytearray(pool[k])
        for _ in range(data.draw(st.integers(0, 4))):
            if len(f) > 83:  # past Ethernet + the 68 bytes GWLB adds: the inner packet
                f[data.draw(st.integers(82, len(f) - 1))] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            f = f[:data.draw(st.integers(min(82, len(f)), len(f)))]
        out.append(bytes(f))
    with tempfile.TemporaryDirectory() as tmp:
        run(write_pcap(Path(tmp) / "m.pcap", out), data.draw(st.sampled_from([1, 3, 64])))
