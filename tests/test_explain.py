"""`egressd policy explain`: what it prints must be what `egressd replay` does.

Each case is a policy and a flow.  explain builds the flow's packets itself (struct,
Python's ssl, its own QUIC Initial) and prints per packet the verdict and the deciding
layer and rule; the same flow built here with scapy (ClientHello from Python's ssl,
QUIC Initial from aioquic), wrapped as GWLB sends it, goes through `egressd replay`.
The packet-by-packet verdicts (read back from the forwarded and dropped pcaps), the
rule hits and the drops by layer and reason (from the stats JSON) must equal what
explain printed.  tshark checks that explain's own packets are well formed.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from conftest import REPO, egressd
from gwlb import wrap, write_pcap
from helpers_pcap import dpkt_records, first, tshark_pdml
from test_l7 import hello, quic_initials

from egressd import cli, flowspec

EXAMPLE = REPO / "rules" / "examples" / "egress-allowlist.yaml"
HOME = "version: 1\nhome_net: [10.0.0.0/8, fd00::/8]\n"

POLICIES = {
    "nacl": HOME + """nacl:
  outbound:
    - {rule: 90, action: deny, protocol: tcp, cidr: 203.0.113.66/32, ports: 443}
    - {rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 443}
    - {rule: 110, action: allow, protocol: udp, cidr: 0.0.0.0/0, ports: 53}
  inbound:
    - {rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 1024-65535}
""",
    "sg": HOME + "security_group:\n  egress: [{protocol: tcp, cidr: 0.0.0.0/0, ports: 443}]\n",
    "dnsfw": HOME + """dns_firewall:
  rules:
    - {priority: 10, domains: [c2.example.net], action: block, response: override,
       override_cname: sinkhole.example.org, override_ttl: 60}
    - {priority: 20, domains: ["*.tracker.example"], action: alert}
""",
    "stateless": HOME + """network_firewall:
  stateless_rule_groups:
    - priority: 1
      name: no-smtp
      rules:
        - {priority: 10, action: drop, protocols: [tcp], destination_ports: ["25"]}
""",
    "action-order": HOME + """network_firewall:
  rule_groups:
    - name: names
      suricata: |
        drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; dotprefix; content:".example.com"; endswith; sid:1;)
        pass tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"www.example.com"; startswith; endswith; sid:2;)
""",
    "drop-strict": HOME + """network_firewall:
  rule_order: strict_order
  stateful_default_actions: [drop_strict]
  rule_groups:
    - name: ok
      priority: 1
      suricata: |
        pass tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"ok.example"; startswith; endswith; sid:7;)
""",
    "egress-only": HOME + "engine: {ipv6_egress_only: true}\n",
    "reject": HOME + """network_firewall:
  rule_groups:
    - name: rejects
      suricata: |
        reject tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"reject.example"; startswith; endswith; msg:"go away"; sid:3;)
""",
}


# --- the same flows, built with scapy ----------------------------------------------------

def _ip(src: str, dst: str):
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def tcp_flow(client: str, cport: int, server: str, sport: int, first_msg: bytes, reply: bytes) -> list[bytes]:
    """Handshake, the first message in MSS-sized segments, one reply (explain's shape)."""
    mss = 1440 if ":" in client else 1460
    c, s = 7000, 90000

    def seg(to_server: bool, flags: str, seq: int, ack: int, data: bytes = b"") -> bytes:
        a, b, pa, pb = (client, server, cport, sport) if to_server else (server, client, sport, cport)
        return bytes(_ip(a, b) / TCP(sport=pa, dport=pb, flags=flags, seq=seq, ack=ack) / data)

    out = [seg(True, "S", c, 0), seg(False, "SA", s, c + 1), seg(True, "A", c + 1, s + 1)]
    out += [seg(True, "PA", c + 1 + at, s + 1, first_msg[at:at + mss]) for at in range(0, len(first_msg), mss)]
    return out + [seg(False, "PA", s + 1, c + 1 + len(first_msg), reply)]


def tls_flow(client: str, cport: int, server: str, sport: int, sni: str) -> list[bytes]:
    return tcp_flow(client, cport, server, sport, hello(sni), b"\x16\x03\x03\x00\x04\x02\x00\x00\x00")


def http_flow(client: str, cport: int, server: str, sport: int, host: str) -> list[bytes]:
    request = f"GET /index.html HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()
    return tcp_flow(client, cport, server, sport, request, b"HTTP/1.1 204 No Content\r\n\r\n")


def plain_tcp(client: str, cport: int, server: str, sport: int) -> list[bytes]:
    return tcp_flow(client, cport, server, sport, b"SSH-2.0-OpenSSH_9.2\r\n", b"SSH-2.0-OpenSSH_9.6\r\n")


def dns_flow(client: str, cport: int, server: str, name: str, qtype: str = "A") -> list[bytes]:
    q = DNS(id=77, rd=1, qd=DNSQR(qname=name, qtype=qtype))
    r = DNS(id=77, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype=qtype))
    return [bytes(_ip(client, server) / UDP(sport=cport, dport=53) / q),
            bytes(_ip(server, client) / UDP(sport=53, dport=cport) / r)]


def quic_flow(client: str, cport: int, server: str, sni: str) -> list[bytes]:
    datagrams = quic_initials(sni, ["h3"], 1)
    assert len(datagrams) == 1
    return [bytes(_ip(client, server) / UDP(sport=cport, dport=443) / datagrams[0]),
            bytes(_ip(server, client) / UDP(sport=443, dport=cport) / (b"\x41" + bytes(30)))]


def ping(client: str, server: str) -> list[bytes]:
    if ":" in client:
        return [bytes(IPv6(src=client, dst=server) / ICMPv6EchoRequest(id=9, seq=1)),
                bytes(IPv6(src=server, dst=client) / ICMPv6EchoReply(id=9, seq=1))]
    return [bytes(IP(src=client, dst=server) / ICMP(type=8, id=9, seq=1)),
            bytes(IP(src=server, dst=client) / ICMP(type=0, id=9, seq=1))]


C, S, R = "10.0.0.5", "203.0.113.7", "198.51.100.53"


@dataclass
class Case:
    id: str
    policy: str                           # "example" or a POLICIES key
    flow: str
    packets: list[bytes]
    decides: tuple[str, str] | None       # (layer, rule id) of the first packet a rule decided
    why: str                              # a phrase the why paragraph must hold


CASES = [
    Case("allowlist-tls-pass", "example", f"tcp {C}:40000 -> {S}:443 sni=pkgs.example.com",
         tls_flow(C, 40000, S, 443, "pkgs.example.com"), ("stateful", "1"),
         "rule sid 1 (pass) is the first rule to match tls.sni pkgs.example.com"),
    Case("allowlist-tls-drop", "example", f"tcp {C}:40001 -> {S}:443 sni=mirror.example.net",
         tls_flow(C, 40001, S, 443, "mirror.example.net"), ("stateful", "9"),
         "the handshake passed before the name"),
    Case("allowlist-http-pass", "example", f"http {C}:40002 -> 203.0.113.8:80 host=downloads.example.org",
         http_flow(C, 40002, "203.0.113.8", 80, "downloads.example.org"), ("stateful", "8"),
         "http.host downloads.example.org"),
    Case("allowlist-dns-block", "example", f"udp {C}:53001 -> {R}:53 dns=mirror.example.net",
         dns_flow(C, 53001, R, "mirror.example.net"), ("dns_firewall", "100"), "NXDOMAIN"),
    Case("allowlist-dns-aaaa", "example", f"udp {C}:53002 -> {R}:53 dns=pkgs.example.com qtype=AAAA",
         dns_flow(C, 53002, R, "pkgs.example.com", "AAAA"), None, "no rule decided the flow"),
    Case("allowlist-ping", "example", f"icmp {C} -> {S}", ping(C, S), ("stateful", "100"), "by its header"),
    Case("allowlist-ipv6-tls", "example", "tcp [fd00::5]:40003 -> [2001:db8::7]:443 sni=v6.example.com",
         tls_flow("fd00::5", 40003, "2001:db8::7", 443, "v6.example.com"), ("stateful", "3"), "tls.sni v6"),
    Case("allowlist-ipv6-ping", "example", "icmp [fd00::5] -> 2001:db8::7", ping("fd00::5", "2001:db8::7"),
         ("stateful", "100"), "allow-ping"),
    Case("allowlist-no-name", "example", f"tcp {C}:40004 -> {S}:22", plain_tcp(C, 40004, S, 22),
         ("stateful", "default"), "drop_established"),
    Case("allowlist-quic", "example", f"quic {C}:50000 -> {S}:443 sni=pkgs.example.com",
         quic_flow(C, 50000, S, "pkgs.example.com"), None, "quic_as_tls"),
    Case("nacl-implicit-deny", "nacl", f"tcp {C}:40005 -> {S}:25", plain_tcp(C, 40005, S, 25),
         ("nacl", "*"), "implicit deny"),
    Case("nacl-deny-rule", "nacl", f"tcp {C}:40006 -> 203.0.113.66:443 sni=a.example",
         tls_flow(C, 40006, "203.0.113.66", 443, "a.example"), ("nacl", "90"), "outbound rule 90"),
    Case("nacl-reply-without-inbound-entry", "nacl", f"udp {C}:53003 -> {R}:53 dns=a.example",
         dns_flow(C, 53003, R, "a.example"), ("nacl", "*"), "replies need an inbound entry"),
    Case("security-group", "sg", f"tcp {C}:40007 -> {S}:8080", plain_tcp(C, 40007, S, 8080),
         ("security_group", "-"), "no security group rule allows"),
    Case("dns-firewall-override", "dnsfw", f"udp {C}:53004 -> {R}:53 dns=c2.example.net",
         dns_flow(C, 53004, R, "c2.example.net"), ("dns_firewall", "10"), "sinkhole.example.org"),
    Case("dns-firewall-alert", "dnsfw", f"udp {C}:53005 -> {R}:53 dns=x.tracker.example",
         dns_flow(C, 53005, R, "x.tracker.example"), None, "alerts: dns_firewall"),
    Case("stateless-drop", "stateless", f"tcp {C}:40008 -> {S}:25", plain_tcp(C, 40008, S, 25),
         ("stateless", "10"), "stateless rule group no-smtp (priority 1)"),
    Case("action-order-pass-wins", "action-order", f"tcp {C}:40009 -> {S}:443 sni=www.example.com",
         tls_flow(C, 40009, S, 443, "www.example.com"), ("stateful", "2"), "default action order"),
    Case("action-order-drop", "action-order", f"tcp {C}:40010 -> {S}:443 sni=dl.example.com",
         tls_flow(C, 40010, S, 443, "dl.example.com"), ("stateful", "1"), "tls.sni dl.example.com"),
    Case("drop-strict-handshake", "drop-strict", f"tcp {C}:40011 -> {S}:443 sni=ok.example",
         tls_flow(C, 40011, S, 443, "ok.example"), ("stateful", "default"), "drop_strict"),
    Case("ipv6-egress-only", "egress-only", "tcp [2001:db8::7]:40012 -> [fd00::5]:22",
         plain_tcp("2001:db8::7", 40012, "fd00::5", 22), ("egress_only", "-"), "opened from outside"),
    Case("reject", "reject", f"tcp {C}:40013 -> {S}:443 sni=reject.example",
         tls_flow(C, 40013, S, 443, "reject.example"), ("stateful", "3"), "it rejects the flow"),
]


# --- reading explain's output ---------------------------------------------------------------

@dataclass
class Printed:
    verdict: str
    reason: str
    rule: tuple[str, str, str] | None      # (layer, group, rule id) as the stats JSON names them
    act: str | None


_HEAD = re.compile(r"#(\d+) (client -> server|server -> client)  \S")
_KINDS = ("sid", "rule", "priority")


def parse_explain(text: str) -> tuple[list[Printed], str]:
    """The packets explain printed, and its why paragraph (joined)."""
    packets: list[Printed] = []
    lines = text.splitlines()
    for k, line in enumerate(lines):
        if _HEAD.match(line):
            assert int(line[1:line.index(" ")]) == len(packets) + 1, line
            packets.append(Printed("", "ok", None, None))
        elif line.startswith(("   PASS", "   DROP")):
            words = line.split()
            packets[-1].verdict = words[0]
            packets[-1].reason = words[1].rstrip(":") if len(words) > 1 else "ok"
        elif line.startswith("   rule  ") and line != "   rule  none":
            layer, group, ident, _where = line[9:].split(" | ")
            kind, _, num = ident.partition(" ")
            packets[-1].rule = (layer, "" if group == "-" else group, num if kind in _KINDS and num else ident)
        elif line.startswith("   act   "):
            packets[-1].act = line[9:]
    why = next(k for k, line in enumerate(lines) if line.startswith("why: "))
    return packets, " ".join(line.strip() for line in lines[why:])


def policy_path(case: Case, tmp: Path) -> Path:
    if case.policy == "example":
        return EXAMPLE
    path = tmp / f"{case.policy}.yaml"
    path.write_text(POLICIES[case.policy])
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_explain_matches_replay(case: Case, tmp_path: Path, capsys) -> None:
    pol = policy_path(case, tmp_path)
    assert cli.main(["policy", "explain", str(pol), "--flow", case.flow]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    printed, why = parse_explain(out.out)

    frames = [wrap(p) for p in case.packets]
    cap = write_pcap(tmp_path / "flow.pcap", frames, [k * 1_000_000 for k in range(len(frames))])
    res = egressd("replay", cap, "--policy", pol, "--out", tmp_path / "out.pcap",
                  "--dropped", tmp_path / "dropped.pcap", "--stats", tmp_path / "s.json", "--no-progress")
    assert res.returncode == 0, res.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    dropped = Counter(r.frame for r in dpkt_records(tmp_path / "dropped.pcap"))
    replayed = []
    for f in frames:
        replayed.append("DROP" if dropped[f] else "PASS")
        dropped[f] -= 1
    created = stats["policy"]["created"]
    made = sum(v for v in created.values() if isinstance(v, int))
    assert len(dpkt_records(tmp_path / "out.pcap")) == replayed.count("PASS") + made

    assert [p.verdict for p in printed] == replayed, out.out
    assert Counter(p.reason for p in printed if p.verdict == "DROP") == Counter(stats["drops"])
    assert Counter(p.rule[0] for p in printed if p.verdict == "DROP") == Counter(stats["drops_by_layer"])
    assert Counter(p.rule for p in printed if p.rule) == {
        (r["layer"], r["group"], r["rule"]): r["hits"] for r in stats["top_rules"]}, out.out
    decided = next(((p.rule[0], p.rule[2]) for p in printed if p.rule), None)
    assert decided == case.decides, out.out
    assert case.why in why, why
    # an action is printed where egressd creates packets, and only there
    assert bool(made) == any(p.act for p in printed), (created, out.out)


BAD_FLOWS = {
    "": "empty",
    "tcp": "expected PROTO SRC -> DST",
    "ftp 10.0.0.5:1 -> 203.0.113.7:21": "unknown protocol 'ftp'",
    "tcp 10.0.0.5:1 203.0.113.7:443": "expected PROTO SRC -> DST",
    "tcp 10.0.0.5 -> 203.0.113.7:443": "source '10.0.0.5': a port is needed",
    "tcp 10.0.0.5:1 -> 203.0.113.7:70000": "port '70000' is not a number from 1 to 65535",
    "tcp 10.0.0.999:1 -> 203.0.113.7:443": "'10.0.0.999' is not an IP address",
    "tcp 2001:db8::1:443 -> [2001:db8::2]:443": "goes in brackets",
    "tcp [2001:db8::1:443 -> [2001:db8::2]:443": "no ']'",
    "tcp [2001:db8::1]:1 -> 203.0.113.7:443": "is IPv6 but destination 203.0.113.7 is IPv4",
    "tcp 10.0.0.5:1 -> 203.0.113.7:443 sni": "'sni': options are key=value",
    "tcp 10.0.0.5:1 -> 203.0.113.7:443 dns=a.example": "unknown option 'dns' for tcp",
    "tcp 10.0.0.5:1 -> 203.0.113.7:443 sni=a.example sni=b.example": "sni= given twice",
    "tcp 10.0.0.5:1 -> 203.0.113.7:443 sni=a.example host=a.example": "exclude each other",
    "http 10.0.0.5:1 -> 203.0.113.7:80": "http needs host=NAME",
    "udp 10.0.0.5:1 -> 203.0.113.7:53 qtype=AAAA": "qtype= needs dns=NAME",
    "udp 10.0.0.5:1 -> 203.0.113.7:53 dns=a.example qtype=BOGUS": "not a DNS Firewall query type",
    "icmp 10.0.0.5:1 -> 203.0.113.7": "icmp takes addresses without ports",
    "tcp 10.0.0.5:1 -> 203.0.113.7:443 sni=bad..name": "is not a domain name",
    "tcp 10.0.0.5:1 -> 203.0.113.7:443 sni=bücher.example": "xn-- form",
    "tcp 10.0.0.5:1 -> 203.0.113.7:443 sni=192.0.2.1": "is an address",
    "tcp 10.0.0.5:١ -> 203.0.113.7:443": "is not a number from 1 to 65535",
}


@pytest.mark.parametrize("flow", BAD_FLOWS, ids=range(len(BAD_FLOWS)))
def test_bad_flow_is_one_line_exit_2(flow: str, capsys) -> None:
    assert cli.main(["policy", "explain", str(EXAMPLE), "--flow", flow]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1, out.err
    assert out.err.startswith(f"egressd: error: --flow {flow!r}: ") and BAD_FLOWS[flow] in out.err, out.err


def test_cli_exit_codes(tmp_path: Path) -> None:
    """As a user runs it: a good flow exits 0 on stdout; a bad flow or a bad policy file
    exits 2 with one line naming it."""
    ok = egressd("policy", "explain", EXAMPLE, "--flow", f"tcp {C}:40000 -> {S}:443 sni=cdn.example.com")
    assert (ok.returncode, ok.stderr) == (0, ""), ok.stderr
    assert "rule  stateful | package-hosts | sid 2 |" in ok.stdout
    bad = egressd("policy", "explain", EXAMPLE, "--flow", "tcp 10.0.0.5 -> x")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == ["egressd: error: --flow 'tcp 10.0.0.5 -> x': source '10.0.0.5': "
                                       "a port is needed (ADDRESS:PORT)"]
    (tmp_path / "p.yaml").write_text("version: 2\n")
    res = egressd("policy", "explain", tmp_path / "p.yaml", "--flow", f"icmp {C} -> {S}")
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and str(tmp_path / "p.yaml") in res.stderr
    missing = egressd("policy", "explain", EXAMPLE)
    assert missing.returncode == 2 and "--flow" in missing.stderr


WELL_FORMED = [f"tcp {C}:40000 -> {S}:443 sni=pkgs.example.com",
               f"http {C}:40001 -> {S}:8080 host=downloads.example.org",
               f"udp {C}:53000 -> {R}:53 dns=mirror.example.net qtype=AAAA",
               f"quic {C}:50000 -> {S}:443 sni=quic.example.org",
               f"udp {C}:5000 -> {S}:9999", f"icmp {C} -> {S}",
               "tcp [fd00::5]:40002 -> [2001:db8::7]:443 sni=v6.example.com",
               "icmp fd00::5 -> [2001:db8::7]"]


def test_explain_packets_are_what_tshark_expects(tmp_path: Path, tshark: str) -> None:
    """Every packet explain builds, GWLB frame included, dissected by tshark: checksums
    good, the GWLB options, the names (tshark decrypts the QUIC Initial itself), TCP
    sequence numbers that follow the handshake, the sizes of the first message."""
    frames, want = [], []
    for text in WELL_FORMED:
        spec = flowspec.parse_flow(text)
        for p in flowspec.build_packets(spec):
            frames.append(flowspec.gwlb_frame(p.inner))
            want.append((spec, p))
    cap = write_pcap(tmp_path / "explain.pcap", frames)
    dissected = tshark_pdml(cap, "ip.check_checksum:TRUE", "tcp.check_checksum:TRUE",
                            "udp.check_checksum:TRUE", "tcp.analyze_sequence_numbers:TRUE")
    assert len(dissected) == len(frames)
    for (spec, p), d in zip(want, dissected):
        where = f"{spec} {p.what}"
        assert [v for v, _ in d["geneve.option.class"]] == ["0x0108"] * 3, where
        assert [v for v, _ in d["geneve.option.type"]] == ["0x01", "0x02", "0x03"], where
        assert [raw for _, raw in d["geneve.option.unknown.data"]] == [
            f"{flowspec.ENDPOINT_ID:016x}", f"{flowspec.ATTACHMENT_ID:016x}", f"{flowspec.FLOW_COOKIE:08x}"]
        # 1: good; the outer UDP checksum is 0, "not present" (3), as RFC 8926 allows
        udp = [v for v, _ in d["udp.checksum.status"]]
        assert udp[0] == "3" and set(udp[1:]) <= {"1"}, where
        for name in ("ip.checksum.status", "tcp.checksum.status", "icmp.checksum.status",
                     "icmpv6.checksum.status"):
            assert {v for v, _ in d.get(name, [])} <= {"1"}, (where, name)
        inner = first(d, "frame.protocols").split(":geneve:")[1]
        assert inner.split(":")[:2] == ["ipv6" if spec.v6 else "ip",
                                        {"tcp": "tcp", "http": "tcp", "udp": "udp", "quic": "udp",
                                         "icmp": "icmpv6" if spec.v6 else "icmp"}[spec.kind]], where
        if p.to_server and ("ClientHello" in p.what):
            assert first(d, "tls.handshake.extensions_server_name") == spec.sni, where
        if p.to_server and "HTTP" in p.what:
            assert first(d, "http.host") == spec.host, where
        if p.to_server and "DNS" in p.what:
            assert (first(d, "dns.qry.name"), first(d, "dns.qry.type")) == (spec.dns, str(spec.qtype)), where
        assert "tcp.analysis.flags" not in d, (where, d.get("_ws.expert.message"))
    assert sum("ClientHello" in p.what for _, p in want) == 3


def test_flow_grammar() -> None:
    s = flowspec.parse_flow("  TCP   [2001:db8::1]:443->[2001:db8::2]:8443   SNI=Example.COM ")
    assert (s.kind, str(s.src), s.sport, str(s.dst), s.dport, s.sni) == \
        ("tcp", "2001:db8::1", 443, "2001:db8::2", 8443, "Example.COM")
    assert flowspec.parse_flow(f"udp {C}:1 -> {R}:53 dns=a.example qtype=TYPE65").qtype == 65
    assert flowspec.parse_flow(f"udp {C}:1 -> {R}:53 dns=a.example qtype=aaaa").qtype == 28
    assert flowspec.parse_flow("icmp [fd00::1] -> fd00::2").v6


TOKENS = ["tcp", "http", "udp", "quic", "icmp", "->", "-", ">", "10.0.0.5", "10.0.0.5:1", "[fd00::1]:443",
          "fd00::1", "[fd00::1", "2001:db8::7]", ":443", "203.0.113.7:65535", "203.0.113.7:0", "sni=a.example",
          "host=a.example", "dns=a.example", "qtype=AAAA", "qtype=TYPE0", "sni=", "=x", "x=y", "sni=a..b",
          "dns=" + "a" * 64, "host=" + ".".join(["b" * 63] * 4), "icmp 10.0.0.1 -> 10.0.0.2"]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(st.sampled_from(TOKENS), max_size=8).map(" ".join), st.text(max_size=60)))
def test_any_flow_string_is_a_flow_or_one_error(text: str) -> None:
    """Whatever the string: a FlowSpec whose packets build and wrap, or FlowSpecError."""
    try:
        spec = flowspec.parse_flow(text)
    except flowspec.FlowSpecError as e:
        assert str(e) and "\n" not in str(e)
        return
    packets = flowspec.build_packets(spec)
    assert packets and all(flowspec.gwlb_frame(p.inner) for p in packets)
    assert packets[0].to_server
