"""Policy scenarios: a policy and the packets of a few flows -> every packet's verdict.

Each scenario is a policy as a user writes it (the YAML of rules.model; some as AWS
`describe-rule-group` / `describe-firewall-policy` JSON, Suricata rules or a DNS
Firewall domain list, from tests/data/policies/) and the inner packets of a few flows
built with scapy (TCP handshake, ClientHello from Python's ssl via test_l7.hello(),
HTTP requests, DNS, UDP, ICMP, QUIC Initials from aioquic, IPv6), wrapped as GWLB sends
them and replayed through the Pipeline in small batches (sizes vary per scenario, so
flows cross batch boundaries).  Every packet's expectation is written out: PASS or
DROP, the drop reason (engine.reasons), the deciding rule as (layer, ident) or
(layer, group, ident) of `policy.catalog[row.rule]`, and the alert (`row.alert`).
Each scenario carries a line naming the AWS behaviour it reproduces and where AWS
documents it (or, for egressd's own options, issue 5).

What a row's rule is: the rule of the layer that decided the packet: a drop's rule,
a stateless pass, or the stateful rule that passed or dropped the flow (and then every
later packet of that flow); a row no rule decided (a NACL or security group allow that
left the packet to the next layers, a flow no stateful rule has judged yet) has none.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from gwlb import wrap, write_pcap
from test_l7 import SERVER_ISN, Tcp, completing, hello, pieces, quic_initials

from egressd.bench.tls import ssl_client_hello
from egressd.engine.flows import FlowConfig
from egressd.engine.pcapio import CaptureReader
from egressd.engine.pipeline import Pipeline
from egressd.engine.reasons import NAMES, Verdict
from egressd.rules.compile import CompiledPolicy, compile_policy
from egressd.rules.load import load_policies
from egressd.rules.policy import Policy

DATA = Path(__file__).resolve().parent / "data" / "policies"

CLIENT, CLIENT2 = "10.1.0.1", "10.1.0.2"
SERVER, SERVER_B = "198.51.100.7", "198.51.100.8"
OTHER = "203.0.113.5"                 # an outside host that opens connections inward
RESOLVER = "198.51.100.53"
CLIENT6, SERVER6 = "2001:db8::1", "2001:db8:1::7"
HOME = "home_net: [10.1.0.0/16, 2001:db8::/64]"

# AWS documentation each scenario cites
NACL = "https://docs.aws.amazon.com/vpc/latest/userguide/nacl-rules.html"
NACL_EPHEMERAL = "https://docs.aws.amazon.com/vpc/latest/userguide/nacl-ephemeral-ports.html"
NACL_DEFAULT = "https://docs.aws.amazon.com/vpc/latest/userguide/default-network-acl.html"
SG = "https://docs.aws.amazon.com/vpc/latest/userguide/vpc-security-groups.html"
SG_RULES = "https://docs.aws.amazon.com/vpc/latest/userguide/security-group-rules.html"
SG_DEFAULT = "https://docs.aws.amazon.com/vpc/latest/userguide/default-security-group.html"
STATELESS = "https://docs.aws.amazon.com/network-firewall/latest/developerguide/stateless-rule-groups-standard.html"
ACTIONS = "https://docs.aws.amazon.com/network-firewall/latest/developerguide/rule-action.html"
TCP_FLAGS = "https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_TCPFlagField.html"
STATELESS_DEFAULTS = "https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_FirewallPolicy.html"
POLICY_STATELESS = "https://docs.aws.amazon.com/network-firewall/latest/developerguide/firewall-policy-stateless.html"
DOMAINS = "https://docs.aws.amazon.com/network-firewall/latest/developerguide/stateful-rule-groups-domain-names.html"
SOURCE_LIST = "https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_RulesSourceList.html"
EXAMPLES = "https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-examples.html"
ORDER = "https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-rule-evaluation-order.html"
STATEFUL_RULE = "https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_StatefulRule.html"
DNSFW_ACTIONS = "https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/resolver-dns-firewall-rule-actions.html"
DNSFW_SETTINGS = "https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/resolver-dns-firewall-rule-settings.html"
DNSFW_LISTS = "https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/resolver-dns-firewall-user-managed-domain-lists.html"
RESOLVED = "https://docs.aws.amazon.com/network-firewall/latest/developerguide/route53-resolved-ip-validation-rules.html"
RESOLVED_POLICY = "https://docs.aws.amazon.com/network-firewall/latest/developerguide/route53-resolved-ip-validation-policy-setting.html"
EIGW = "https://docs.aws.amazon.com/vpc/latest/userguide/egress-only-internet-gateway.html"
ISSUE = "issue 5 (egressd's own option, off by default)"


# --- expectations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Exp:
    verdict: str                          # "PASS" or "DROP"
    reason: str = "ok"                    # engine.reasons NAMES
    rule: tuple[str, ...] | None = None   # (layer, ident) or (layer, group, ident)
    alert: tuple[str, ...] | None = None


PASS = Exp("PASS")


def ok(rule: tuple[str, ...] | None = None, alert: tuple[str, ...] | None = None) -> Exp:
    return Exp("PASS", "ok", rule, alert)


def drop(reason: str, rule: tuple[str, ...], alert: tuple[str, ...] | None = None) -> Exp:
    assert reason in NAMES, reason
    return Exp("DROP", reason, rule, alert)


def sf(sid: int | str) -> tuple[str, str]:
    return ("stateful", str(sid))


DEFAULT = ("stateful", "default")             # a stateful default action
NACL_OUT = ("nacl", "outbound", "*")
NACL_IN = ("nacl", "inbound", "*")
SG_NONE = ("security_group", "-")


@dataclass
class Row:
    what: str
    raw: bytes
    exp: Exp
    ts: int | None = None                 # ns; None: 1 ms after the previous row


Exps = Exp | list[Exp]


def _each(exp: Exps, n: int) -> list[Exp]:
    out = exp if isinstance(exp, list) else [exp] * n
    assert len(out) == n, (len(out), n)
    return out


def rows(what: str, packets: list[bytes], exp: Exps) -> list[Row]:
    return [Row(f"{what} #{k}", p, e) for k, (p, e) in enumerate(zip(packets, _each(exp, len(packets))))]


# --- traffic ----------------------------------------------------------------------------------

_ports = itertools.count(40000)


def conn(dport: int = 443, client: str = CLIENT, server: str = SERVER, sport: int | None = None) -> Tcp:
    return Tcp(next(_ports) if sport is None else sport, dport, client, server)


def closing(c: Tcp, sent: int, received: int) -> list[bytes]:
    """FIN from the client, FIN from the server, the client's last ACK."""
    return [c._seg(True, c.isn + 1 + sent, SERVER_ISN + 1 + received, "FA", b""),
            c._seg(False, SERVER_ISN + 1 + received, c.isn + 2 + sent, "FA", b""),
            c._seg(True, c.isn + 2 + sent, SERVER_ISN + 2 + received, "A", b"")]


def order(parts: list[tuple[int, bytes]], how: str) -> list[tuple[int, bytes]]:
    if how == "in_order":
        return list(parts)
    if how == "reversed":
        return parts[::-1]
    assert how == "shuffled"
    out = list(parts)
    random.Random(len(parts)).shuffle(out)
    if out == parts:
        out = out[1:] + out[:1]
    return out


def tcp(what: str, c: Tcp, first: bytes, *, hs: Exps = PASS, at: Exp = PASS, wait: Exp = PASS,
        after: Exps | None = None, split: int = 1, how: str = "in_order",
        reply: bytes = b"\x16\x03\x03\x00\x04\x02\x00\x00\x00",
        more: bytes = b"\x17\x03\x03\x00\x05hello") -> list[Row]:
    """One TCP connection: handshake (hs), the client's first message in `split`
    segments delivered `how` (segments before the one completing it: wait; that one: at;
    later ones: after, or at when after lists the five rows that follow), then a server
    reply, more client data and the FIN exchange (after: one Exp or five; default at)."""
    after = at if after is None else after
    out = rows(f"{what} handshake", c.handshake(), hs)
    sent = order(pieces(first, split), how)
    k = completing(sent, len(first))
    for j, (off, data) in enumerate(sent):
        e = wait if j < k else at if j == k else (after if isinstance(after, Exp) else at)
        out.append(Row(f"{what} first[{j}]", c.data(off, data), e))
    rest = [c.reply(0, reply), c.data(len(first), more)] + closing(c, len(first) + len(more), len(reply))
    return out + rows(f"{what} rest", rest, after)


def tls(name: str | None, c: Tcp | None = None, **kw) -> list[Row]:
    data = kw.pop("data", None) or (hello(name) if name else ssl_client_hello(None))
    return tcp(f"tls {name}", c or conn(), data, **kw)


def http(host: str, c: Tcp | None = None, path: str = "/", **kw) -> list[Row]:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: apt/2.6\r\nAccept: */*\r\n\r\n"
    return tcp(f"http {host}", c or conn(80), request.encode(), reply=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
               more=b"GET /next HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n", **kw)


SSH_CLIENT = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"


def ssh(c: Tcp | None = None, **kw) -> list[Row]:
    """A protocol without a name whose client speaks first."""
    return tcp("ssh", c or conn(22), SSH_CLIENT, reply=b"SSH-2.0-OpenSSH_8.9\r\n",
               more=bytes(range(48)), **kw)


def ip(src: str, dst: str):
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def udp(what: str, src: str, dst: str, sport: int, dport: int, exp: Exp,
        reply_exp: Exp | None = None, payload: bytes = b"ping") -> list[Row]:
    out = [Row(f"{what} request", bytes(ip(src, dst) / UDP(sport=sport, dport=dport) / payload), exp)]
    if reply_exp is not None:
        out.append(Row(f"{what} reply", bytes(ip(dst, src) / UDP(sport=dport, dport=sport) / b"pong"), reply_exp))
    return out


def dns(qname: str, answers: tuple[tuple[str, str, str, int], ...] | list = (), *, qtype: str = "A",
        q: Exp = PASS, r: Exp | None = None, client: str = CLIENT, server: str = RESOLVER,
        ts: int | None = None) -> list[Row]:
    """A DNS query (expected q) and its response with `answers` (rrname, type, rdata, ttl),
    expected r (PASS if None); `ts`: the query's time, the response 1 ms later."""
    sport = next(_ports)
    query = DNS(id=sport & 0xFFFF, rd=1, qd=DNSQR(qname=qname, qtype=qtype))
    an = [DNSRR(rrname=n, type=t, rdata=d, ttl=ttl) for n, t, d, ttl in answers]
    resp = DNS(id=sport & 0xFFFF, qr=1, rd=1, ra=1, qd=DNSQR(qname=qname, qtype=qtype), an=an)
    out = [Row(f"dns {qname} {qtype} query", bytes(ip(client, server) / UDP(sport=sport, dport=53) / query), q, ts),
           Row(f"dns {qname} response", bytes(ip(server, client) / UDP(sport=53, dport=sport) / resp),
               PASS if r is None else r, None if ts is None else ts + 1_000_000)]
    return out


def ping(src: str, dst: str, req: Exp, rep: Exp) -> list[Row]:
    ident = next(_ports) & 0xFFFF
    if ":" in src:
        a = IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=ident, seq=1, data=b"x" * 16)
        b = IPv6(src=dst, dst=src) / ICMPv6EchoReply(id=ident, seq=1, data=b"x" * 16)
    else:
        a = IP(src=src, dst=dst) / ICMP(type=8, id=ident, seq=1) / (b"x" * 16)
        b = IP(src=dst, dst=src) / ICMP(type=0, id=ident, seq=1) / (b"x" * 16)
    return [Row(f"ping {src}->{dst}", bytes(a), req), Row(f"pong {dst}->{src}", bytes(b), rep)]


def syn(what: str, src: str, dst: str, dport: int, exp: Exp, flags: str = "S") -> list[Row]:
    return [Row(what, bytes(ip(src, dst) / TCP(sport=next(_ports), dport=dport, flags=flags, seq=1000)), exp)]


def with_ech(ch: bytes) -> bytes:
    """The ClientHello record `ch` with an encrypted_client_hello extension (0xfe0d,
    an outer ECH: type 0, HPKE suite, config id, enc, payload) appended and every
    length fixed."""
    assert ch[0] == 22 and len(ch) == 5 + int.from_bytes(ch[3:5], "big") and ch[5] == 1
    body = bytearray(ch[9:])
    p = 2 + 32
    p += 1 + body[p]                                   # session id
    p += 2 + int.from_bytes(body[p:p + 2], "big")      # cipher suites
    p += 1 + body[p]                                   # compression methods
    ext_len = int.from_bytes(body[p:p + 2], "big")
    assert p + 2 + ext_len == len(body)
    ech = b"\x00" + b"\x00\x01\x00\x01" + b"\x2a" + b"\x00\x20" + bytes(range(32)) + b"\x00\x40" + bytes(64)
    ext = b"\xfe\x0d" + len(ech).to_bytes(2, "big") + ech
    body[p:p + 2] = (ext_len + len(ext)).to_bytes(2, "big")
    body += ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + bytes(body)
    return ch[:3] + len(hs).to_bytes(2, "big") + hs


def quic(name: str, *, at: Exp, wait: Exp = PASS, after: Exp | None = None, big: bool = False,
         v6: bool = False) -> list[Row]:
    """A QUIC client's Initial datagram(s) (aioquic) and a server datagram."""
    alpn = ["h3", *(f"proto-{k:03d}-" + "x" * 100 for k in range(30))] if big else ["h3"]
    datagrams = quic_initials(name, alpn, 1)
    sport = next(_ports)
    src, dst = (CLIENT6, SERVER6) if v6 else (CLIENT, SERVER)
    out = [Row(f"quic {name} initial[{k}]", bytes(ip(src, dst) / UDP(sport=sport, dport=443) / d),
               wait if k < len(datagrams) - 1 else at) for k, d in enumerate(datagrams)]
    out.append(Row(f"quic {name} server", bytes(ip(dst, src) / UDP(sport=443, dport=sport) / (b"\xc0" + bytes(60))),
                   at if after is None else after))
    return out


# --- scenarios --------------------------------------------------------------------------------

@dataclass
class Scenario:
    id: str
    aws: str                                   # the behaviour reproduced, and its source
    policy: list[tuple[str, str] | Path]       # files loaded in order: (name, text) or a fixture
    rows: list[Row]
    batch: int = 0                             # 0: chosen from the scenario's place
    counters: dict[str, int] = field(default_factory=dict)
    hits: dict[tuple[str, ...], int] | None = None   # rule_hits of the catalog entries named
    check: Callable[[Policy, CompiledPolicy], None] | None = None


def yaml(body: str) -> list[tuple[str, str]]:
    return [("policy.yaml", f"version: 1\n{HOME}\n{body}")]


def suricata(rules: str, *, strict: bool = False, defaults: str = "") -> list[tuple[str, str]]:
    order_ = "  rule_order: strict_order\n" if strict else ""
    dflt = f"  stateful_default_actions: [{defaults}]\n" if defaults else ""
    text = "\n".join("        " + line.strip() for line in rules.strip().splitlines())
    return yaml(f"network_firewall:\n{order_}{dflt}  rule_groups:\n    - suricata: |\n{text}\n")


def domain_list(targets: str, types: str, kind: str, *, engine: str = "") -> list[tuple[str, str]]:
    head = f"engine: {{{engine}}}\n" if engine else ""
    return yaml(f"{head}network_firewall:\n  rule_groups:\n    - domain_list: {{targets: [{targets}], "
                f"target_types: [{types}], type: {kind}}}\n")


SCENARIOS: list[Scenario] = []


def scenario(*args, **kw) -> None:
    SCENARIOS.append(Scenario(*args, **kw))


# === Network ACL: stateless numbered rules per direction, lowest first, implicit deny ===========

scenario(
    "nacl-deny-100-before-allow-200",
    f"rules are evaluated lowest number first; the first match decides, however they are written ({NACL})",
    yaml("""nacl:
  outbound:
    - {rule: 200, action: allow, protocol: all, cidr: 0.0.0.0/0}
    - {rule: 100, action: deny, protocol: tcp, cidr: 198.51.100.0/24, ports: 443}
  inbound:
    - {rule: 100, action: allow, protocol: all, cidr: 0.0.0.0/0}
"""),
    syn("syn :443 (deny 100)", CLIENT, SERVER, 443, drop("nacl_deny", ("nacl", "outbound", "100")))
    + syn("syn :80 (allow 200)", CLIENT, SERVER, 80, PASS)
    + udp("udp :443 (allow 200)", CLIENT, SERVER, 5353, 443, PASS, PASS),
    hits={("nacl", "outbound", "100"): 1})

scenario(
    "nacl-allow-100-before-deny-200",
    f"a lower-numbered allow wins over a later deny ({NACL})",
    yaml("""nacl:
  outbound:
    - {rule: 100, action: allow, protocol: tcp, cidr: 198.51.100.7/32, ports: 443}
    - {rule: 200, action: deny, protocol: tcp, cidr: 0.0.0.0/0}
  inbound:
    - {rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 1024-65535}
"""),
    tls("www.example.org")
    + syn("syn to another host (deny 200)", CLIENT, SERVER_B, 443, drop("nacl_deny", ("nacl", "outbound", "200"))))

scenario(
    "nacl-implicit-deny",
    f"a packet no numbered rule matches meets the `*` rule and is denied, in each direction ({NACL})",
    yaml("""nacl:
  outbound: [{rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 443}]
  inbound: [{rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 1024-65535}]
"""),
    udp("ntp", CLIENT, SERVER, 40123, 123, drop("nacl_deny", NACL_OUT))
    + ping(CLIENT, SERVER, drop("nacl_deny", NACL_OUT), drop("nacl_deny", NACL_IN))
    + syn("inbound ssh", OTHER, CLIENT, 22, drop("nacl_deny", NACL_IN)),
    hits={NACL_OUT: 2, NACL_IN: 2})

scenario(
    "nacl-return-traffic-needs-inbound-rule",
    f"NACLs are stateless: responses are judged by the inbound rules, here only `*` ({NACL})",
    yaml("""nacl:
  outbound: [{rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 443}]
"""),
    tls("www.example.org", hs=[PASS, drop("nacl_deny", NACL_IN), PASS], at=PASS,
        after=[drop("nacl_deny", NACL_IN), PASS, PASS, drop("nacl_deny", NACL_IN), PASS]))

scenario(
    "nacl-ephemeral-ports",
    f"return traffic is allowed by an inbound rule for the ephemeral ports 1024-65535 ({NACL_EPHEMERAL})",
    yaml("""nacl:
  outbound: [{rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 443}]
  inbound: [{rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, ports: 1024-65535}]
"""),
    tls("www.example.org")
    # a client on a privileged source port: the replies go to port 1000, outside the rule
    + tls("low.example.org", conn(sport=1000), hs=[PASS, drop("nacl_deny", NACL_IN), PASS], at=PASS,
          after=[drop("nacl_deny", NACL_IN), PASS, PASS, drop("nacl_deny", NACL_IN), PASS]))

scenario(
    "nacl-protocol-icmp",
    f"a rule for protocol icmp matches ICMP only; every other protocol meets `*` ({NACL})",
    yaml("""nacl:
  outbound: [{rule: 100, action: allow, protocol: icmp, cidr: 0.0.0.0/0}]
  inbound: [{rule: 100, action: allow, protocol: icmp, cidr: 0.0.0.0/0}]
"""),
    ping(CLIENT, SERVER, PASS, PASS)
    + syn("tcp", CLIENT, SERVER, 443, drop("nacl_deny", NACL_OUT))
    + udp("udp", CLIENT, SERVER, 40000, 53, drop("nacl_deny", NACL_OUT)))

scenario(
    "nacl-protocol-udp",
    f"a rule for protocol udp and a port matches UDP to that port only ({NACL})",
    yaml("""nacl:
  outbound: [{rule: 100, action: allow, protocol: udp, cidr: 0.0.0.0/0, ports: 53}]
  inbound: [{rule: 100, action: allow, protocol: udp, cidr: 0.0.0.0/0, ports: 1024-65535}]
"""),
    dns("www.example.org", [("www.example.org", "A", "192.0.2.1", 60)])
    + syn("tcp :53", CLIENT, RESOLVER, 53, drop("nacl_deny", NACL_OUT))
    + udp("udp :123", CLIENT, SERVER, 40001, 123, drop("nacl_deny", NACL_OUT)))

scenario(
    "nacl-protocol-all-and-inbound-source-deny",
    f"protocol all (-1) matches every protocol; an inbound deny by source CIDR, numbered first ({NACL})",
    yaml("""nacl:
  outbound: [{rule: 100, action: allow, protocol: all, cidr: 0.0.0.0/0}]
  inbound:
    - {rule: 100, action: deny, protocol: all, cidr: 203.0.113.0/24}
    - {rule: 200, action: allow, protocol: -1, cidr: 0.0.0.0/0}
"""),
    tls("www.example.org")
    + udp("udp to a denied net", CLIENT, OTHER, 40002, 9999, PASS, drop("nacl_deny", ("nacl", "inbound", "100")))
    + ping(CLIENT, OTHER, PASS, drop("nacl_deny", ("nacl", "inbound", "100"))))

scenario(
    "nacl-ipv6-rule-is-not-an-ipv4-rule",
    f"an entry has an IPv4 or an IPv6 CIDR; ::/0 is all IPv6 traffic (the default NACL adds a separate "
    f"::/0 rule for it), so IPv4 meets `*` ({NACL_DEFAULT})",
    yaml("""nacl:
  outbound: [{rule: 100, action: allow, protocol: tcp, cidr: "::/0", ports: 443}]
  inbound: [{rule: 100, action: allow, protocol: tcp, cidr: "::/0", ports: 1024-65535}]
"""),
    tls("v6.example.org", conn(client=CLIENT6, server=SERVER6))
    + syn("ipv4 syn :443", CLIENT, SERVER, 443, drop("nacl_deny", NACL_OUT)))

# === Security group: stateful, allow only, replies allowed ======================================

scenario(
    "sg-default-egress-allow-all",
    f"a security group without outbound rules is the default: all outbound traffic allowed; no inbound "
    f"rule: inbound connections dropped ({SG_DEFAULT})",
    yaml("security_group: {}\n"),
    tls("www.example.org") + udp("udp", CLIENT, SERVER, 40003, 9999, PASS, PASS) + ping(CLIENT, SERVER, PASS, PASS)
    + tcp("inbound ssh", conn(22, client=OTHER, server=CLIENT), SSH_CLIENT,
          hs=drop("security_group", SG_NONE), at=drop("security_group", SG_NONE)),
    counters={"flows_dropped": 1})

scenario(
    "sg-replies-allowed-whatever-the-rules",
    f"security groups are stateful: responses to allowed outbound traffic flow in regardless of inbound "
    f"rules; other outbound traffic has no rule ({SG})",
    yaml("security_group:\n  egress: [{protocol: tcp, cidr: 0.0.0.0/0, ports: 443}]\n"),
    tls("www.example.org")
    + udp("dns", CLIENT, RESOLVER, 40004, 53, drop("security_group", SG_NONE), drop("security_group", SG_NONE))
    + syn("tcp :80", CLIENT, SERVER, 80, drop("security_group", SG_NONE)))

scenario(
    "sg-no-ingress-rule-drops-inbound",
    f"no inbound rule: no inbound connection is allowed, whatever the protocol ({SG_RULES})",
    yaml("security_group: {}\n"),
    udp("inbound udp", OTHER, CLIENT, 5000, 5000, drop("security_group", SG_NONE), drop("security_group", SG_NONE))
    + ping(OTHER, CLIENT, drop("security_group", SG_NONE), drop("security_group", SG_NONE))
    + syn("inbound https", OTHER, CLIENT, 443, drop("security_group", SG_NONE)))

scenario(
    "sg-ingress-rule-replies-need-no-egress-rule",
    f"an inbound rule allows the connection and its responses go out even with no outbound rule ({SG})",
    yaml("security_group:\n  egress: []\n  ingress: [{protocol: tcp, cidr: 0.0.0.0/0, ports: 22}]\n"),
    tcp("inbound ssh", conn(22, client=OTHER, server=CLIENT), SSH_CLIENT)
    + syn("outbound https (no egress rule)", CLIENT, SERVER, 443, drop("security_group", SG_NONE)))

scenario(
    "sg-most-permissive-rule-wins",
    f"rules are allow-only and all are evaluated together: the most permissive one applies ({SG_RULES})",
    yaml("""security_group:
  egress:
    - {protocol: tcp, cidr: 198.51.100.7/32, ports: 443}
    - {protocol: all, cidr: 198.51.100.0/24}
"""),
    tls("alt.example.org", conn(8443))
    + udp("udp in the /24", CLIENT, SERVER_B, 40005, 9999, PASS, PASS)
    + syn("outside both rules", CLIENT, OTHER, 443, drop("security_group", SG_NONE)))

scenario(
    "sg-icmp-rule",
    f"a rule for ICMP allows echo requests, and their replies come back (stateful) ({SG_RULES})",
    yaml("security_group:\n  egress: [{protocol: icmp, cidr: 0.0.0.0/0}]\n"),
    ping(CLIENT, SERVER, PASS, PASS) + syn("tcp", CLIENT, SERVER, 443, drop("security_group", SG_NONE)))

scenario(
    "sg-ipv6-rule-is-not-an-ipv4-rule",
    f"a rule's destination is an IPv4 or an IPv6 CIDR; ::/0 allows IPv6 traffic only ({SG_RULES})",
    yaml("security_group:\n  egress: [{protocol: tcp, cidr: \"::/0\", ports: 443}]\n"),
    tls("v6.example.org", conn(client=CLIENT6, server=SERVER6))
    + syn("ipv4 syn :443", CLIENT, SERVER, 443, drop("security_group", SG_NONE)))

# === Network Firewall stateless rules ===========================================================

scenario(
    "stateless-priority-order",
    f"stateless rules run lowest priority first, the first match's action applies; no match: the "
    f"stateless default action (forward to stateful) ({STATELESS})",
    yaml("""network_firewall:
  stateless_rule_groups:
    - priority: 10
      rules:
        - {priority: 20, action: drop, protocols: [tcp], destination_ports: [443]}
        - {priority: 5, action: pass, protocols: [tcp], destinations: [198.51.100.7/32]}
"""),
    syn("to the passed host", CLIENT, SERVER, 443, ok(("stateless", "5")))
    + syn("to another host :443", CLIENT, SERVER_B, 443, drop("stateless_drop", ("stateless", "20")))
    + syn("to another host :80", CLIENT, SERVER_B, 80, PASS))

scenario(
    "stateless-pass-skips-stateful",
    f"aws:pass sends the packet on without stateful inspection; aws:forward_to_sfe (here the default) "
    f"hands it to the stateful engine ({ACTIONS})",
    yaml("""network_firewall:
  stateless_rule_groups:
    - priority: 10
      rules:
        - {priority: 1, action: pass, protocols: [tcp], destination_ports: [443]}
        - {priority: 2, action: pass, protocols: [tcp], source_ports: [443]}
  rule_groups:
    - domain_list: {targets: [.bad.example], target_types: [tls_sni, http_host], type: denylist}
"""),
    tls("www.bad.example", hs=[ok(("stateless", "1")), ok(("stateless", "2")), ok(("stateless", "1"))],
        at=ok(("stateless", "1")),
        after=[ok(("stateless", "2")), ok(("stateless", "1")), ok(("stateless", "1")), ok(("stateless", "2")),
               ok(("stateless", "1"))])
    + http("www.bad.example", at=drop("stateful_drop", sf(2))))

scenario(
    "stateless-drop",
    f"aws:drop discards the packet ({ACTIONS})",
    yaml("""network_firewall:
  stateless_rule_groups:
    - priority: 10
      rules: [{priority: 1, action: drop, protocols: [udp], destination_ports: [53]}]
"""),
    dns("www.example.org", q=drop("stateless_drop", ("stateless", "1")), r=PASS) + tls("www.example.org"))

scenario(
    "stateless-forward-to-stateful",
    f"aws:forward_to_sfe: the stateful rules decide ({ACTIONS})",
    yaml("""network_firewall:
  stateless_rule_groups:
    - priority: 10
      rules: [{priority: 1, action: forward, protocols: [tcp], destination_ports: [443]}]
  rule_groups:
    - domain_list: {targets: [.bad.example], target_types: [tls_sni], type: denylist}
"""),
    tls("www.bad.example", at=drop("stateful_drop", sf(1))) + tls("www.good.example"))

scenario(
    "stateless-default-drop",
    f"a packet no stateless rule matches takes the policy's stateless default action, here aws:drop "
    f"({STATELESS_DEFAULTS})",
    yaml("""network_firewall:
  stateless_default_actions: drop
  stateless_rule_groups:
    - priority: 10
      rules:
        - {priority: 1, action: forward, protocols: [tcp], destination_ports: [443]}
        - {priority: 2, action: forward, protocols: [tcp], source_ports: [443]}
"""),
    tls("www.example.org")
    + dns("www.example.org", q=drop("stateless_default_drop", ("stateless", "default")),
          r=drop("stateless_default_drop", ("stateless", "default"))))

scenario(
    "stateless-default-pass",
    f"stateless default aws:pass: unmatched packets skip the stateful engine ({STATELESS_DEFAULTS})",
    yaml("""network_firewall:
  stateless_default_actions: pass
  rule_groups:
    - domain_list: {targets: [.bad.example], target_types: [tls_sni], type: denylist}
"""),
    tls("www.bad.example", hs=ok(("stateless", "default")), at=ok(("stateless", "default"))))

scenario(
    "stateless-tcp-flags-syn-only",
    f"TCP flags with masks: Flags [SYN] under Masks [SYN, ACK] matches a SYN without ACK (ECE/CWR not "
    f"inspected), not a SYN-ACK ({TCP_FLAGS})",
    yaml("""network_firewall:
  stateless_rule_groups:
    - priority: 10
      rules:
        - {priority: 1, action: drop, protocols: [tcp], sources: [203.0.113.0/24],
           tcp_flags: {flags: [SYN], masks: [SYN, ACK]}}
"""),
    syn("inbound SYN", OTHER, CLIENT, 22, drop("stateless_drop", ("stateless", "1")))
    + syn("inbound SYN+ECE+CWR", OTHER, CLIENT, 22, drop("stateless_drop", ("stateless", "1")), flags="SEC")
    + tls("www.example.net", conn(server=OTHER)))   # its SYN-ACK, ACKs and FINs from OTHER pass

scenario(
    "stateless-groups-by-priority",
    f"stateless rule groups run in the policy's priority order, then rules by priority inside each "
    f"({POLICY_STATELESS})",
    yaml("""network_firewall:
  stateless_rule_groups:
    - priority: 20
      rules: [{priority: 1, action: pass, protocols: [tcp]}]
    - priority: 10
      rules: [{priority: 50, action: drop, protocols: [tcp], destination_ports: [22]}]
"""),
    syn("ssh", CLIENT, SERVER, 22, drop("stateless_drop", ("stateless", "stateless-10", "50")))
    + syn("https", CLIENT, SERVER, 443, ok(("stateless", "stateless-20", "1"))))

scenario(
    "stateless-aws-json-policy",
    f"describe-firewall-policy + describe-rule-group: TCP flag masks, pass, forward, stateless default "
    f"aws:drop ({STATELESS_DEFAULTS}, {TCP_FLAGS})",
    [DATA / "stateless-policy.json", DATA / "stateless-inbound.json"],
    syn("inbound SYN", OTHER, CLIENT, 22, drop("stateless_drop", ("stateless", "10")))
    + dns("www.example.org", q=ok(("stateless", "30")), r=ok(("stateless", "20")))
    + tls("www.example.org")
    + udp("udp :9999", CLIENT, SERVER, 40006, 9999, drop("stateless_default_drop", ("stateless", "default"))))

# === Domain lists: matching ======================================================================

scenario(
    "domains-leading-dot-apex-and-subdomains",
    f"`.example.com` matches example.com and all its subdomains ({SOURCE_LIST})",
    domain_list(".example.com", "tls_sni", "denylist"),
    tls("example.com", at=drop("stateful_drop", sf(1)))
    + tls("www.example.com", at=drop("stateful_drop", sf(1)))
    + tls("a.b.example.com", at=drop("stateful_drop", sf(1)))
    + tls("example.org"))

scenario(
    "domains-explicit-name-is-exact",
    f"`example.com` (no leading dot) matches only that name, not www.example.com ({SOURCE_LIST})",
    domain_list("example.com", "tls_sni", "denylist"),
    tls("example.com", at=drop("stateful_drop", sf(1))) + tls("www.example.com"))

scenario(
    "domains-no-look-alikes",
    f"`.example.com` matches at a label boundary only: not badexample.com, nor example.com.evil.test "
    f"({SOURCE_LIST})",
    domain_list(".example.com", "tls_sni, http_host", "denylist"),
    tls("badexample.com") + tls("example.com.evil.test") + http("badexample.com") + tls("www.example.co"))

scenario(
    "domains-suffix-is-not-a-subdomain",
    f"www.google.com.example.com is under .example.com, not .google.com: an allowlist for .google.com "
    f"drops it ({SOURCE_LIST}, {DOMAINS})",
    domain_list(".google.com", "tls_sni", "allowlist"),
    tls("www.google.com", at=ok(sf(1))) + tls("google.com", at=ok(sf(1)))
    + tls("www.google.com.example.com", at=drop("stateful_drop", sf(2)))
    + tls("notgoogle.com", at=drop("stateful_drop", sf(2))))

scenario(
    "domains-case-insensitive-trailing-dot",
    f"names compare case-insensitively and one trailing dot is no part of the name (DNS names; "
    f"AWS-SEMANTICS edge case 5; {DOMAINS})",
    domain_list(".Example.COM.", "tls_sni, http_host", "denylist"),
    tls("WWW.Example.Com", at=drop("stateful_drop", sf(1)))
    + tls("API.EXAMPLE.COM.", at=drop("stateful_drop", sf(1)))
    + http("Www.EXAMPLE.com.", at=drop("stateful_drop", sf(2))))

scenario(
    "domains-http-host-target-type",
    f"HTTP_HOST inspects the HTTP Host header only; TLS traffic is not touched by it ({DOMAINS})",
    domain_list(".example.org", "http_host", "denylist"),
    http("dl.example.org", at=drop("stateful_drop", sf(1)))
    + tls("dl.example.org") + http("dl.example.net"))

scenario(
    "domains-tls-sni-target-type",
    f"TLS_SNI inspects the ClientHello's SNI only: an SNI allowlist leaves HTTP alone ({DOMAINS})",
    domain_list(".pkgs.example", "tls_sni", "allowlist"),
    http("evil.test") + tls("evil.test", at=drop("stateful_drop", sf(2))) + tls("deb.pkgs.example", at=ok(sf(1))))

scenario(
    "domains-rejectlist",
    f"REJECTLIST: the generated rules reject the matching flows ({DOMAINS}, {STATEFUL_RULE})",
    domain_list(".bad.example", "tls_sni, http_host", "rejectlist"),
    tls("www.bad.example", at=drop("stateful_reject", sf(1)))
    + http("bad.example", at=drop("stateful_reject", sf(2))) + tls("good.example"))

scenario(
    "domains-alertlist",
    f"ALERTLIST: matching flows pass and are logged ({DOMAINS}, {STATEFUL_RULE})",
    domain_list(".watch.example", "tls_sni, http_host", "alertlist"),
    tls("www.watch.example", at=ok(alert=sf(1)), after=PASS)
    + http("watch.example", at=ok(alert=sf(2)), after=PASS) + tls("other.example"),
    counters={"alerts": 2, "flows_dropped": 0})

scenario(
    "domains-allowlist-aws-json",
    f"a describe-rule-group ALLOWLIST: one pass rule per target and type, a drop per type for the rest "
    f"({EXAMPLES})",
    [DATA / "pkgs-allowlist.json"],
    tls("deb.pkgs.example", at=ok(sf(1))) + tls("pkgs.example", at=ok(sf(1)))
    + http("deb.example.org", at=ok(sf(4))) + tls("deb.example.org", at=ok(sf(2)))
    + tls("evil.test", at=drop("stateful_drop", sf(5))) + http("www.deb.example.org", at=drop("stateful_drop", sf(6))))

scenario(
    "rule-group-home-net-keeps-policy-external-net",
    "a rule group's own HOME_NET does not move $EXTERNAL_NET, which stays the negation of the policy's "
    "HOME_NET (here the default, RFC 1918): a denylist misses internal servers and other clients "
    "(https://docs.aws.amazon.com/network-firewall/latest/developerguide/troubleshooting-rules.html)",
    [DATA / "denylist-own-home-net.json"],
    tls("www.blocked.example", at=drop("stateful_drop", sf(1)))
    + tls("www.blocked.example", conn(server="10.1.0.9"))
    + tls("www.blocked.example", conn(client=CLIENT2)))

# === Allowlists and traffic without a name =======================================================

scenario(
    "allowlist-handshake-then-cut-at-the-name",
    f"allowlist: the handshake passes, the packet carrying the non-matching SNI is dropped and everything "
    f"after it (AWS-SEMANTICS edge case 6; {DOMAINS})",
    domain_list(".pkgs.example", "tls_sni, http_host", "allowlist"),
    tls("evil.test", hs=PASS, at=drop("stateful_drop", sf(3)))
    + http("evil.test", hs=PASS, at=drop("stateful_drop", sf(4))),
    counters={"flows_dropped": 2, "flows_passed": 0},
    hits={sf(3): 6, sf(4): 6})           # every packet each rule dropped

scenario(
    "allowlist-allowed-flow-whole",
    f"allowlist: a matching name passes its whole flow ({DOMAINS})",
    domain_list(".pkgs.example", "tls_sni, http_host", "allowlist"),
    tls("deb.pkgs.example", at=ok(sf(1))) + http("security.pkgs.example", at=ok(sf(2))),
    counters={"flows_passed": 2, "flows_dropped": 0})

scenario(
    "allowlist-untouched-without-a-name",
    f"an allowlist judges only the protocols of its target types: SSH (client speaks first), plain UDP "
    f"and ICMP pass (then the default action decides; here none) ({DOMAINS})",
    domain_list(".pkgs.example", "tls_sni, http_host", "allowlist"),
    ssh() + udp("udp", CLIENT, SERVER, 40007, 9999, PASS, PASS) + ping(CLIENT, SERVER, PASS, PASS),
    counters={"flows_dropped": 0, "flows_judged_without_name": 0})

scenario(
    "allowlist-client-hello-without-sni",
    f"a ClientHello without SNI matches no pass rule; the generated `drop tls ... ssl_state:client_hello` "
    f"drops it ({EXAMPLES})",
    domain_list(".pkgs.example", "tls_sni", "allowlist"),
    tls(None, at=drop("stateful_drop", sf(2)))
    + tls(None, split=3, at=drop("stateful_drop", sf(2))))

# === Action order vs strict order =================================================================

SAME_NAME = """
drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"app.example"; startswith; endswith; sid:1;)
pass tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"app.example"; startswith; endswith; sid:2;)
"""

scenario(
    "action-order-pass-beats-drop",
    f"default action order: pass rules are evaluated before drop rules, whatever the order written "
    f"({ORDER})",
    suricata(SAME_NAME),
    tls("app.example", at=ok(sf(2))))

scenario(
    "action-order-pass-anywhere-passes-the-flow",
    f"action order: once a packet of a flow matches a pass rule, Suricata passes the rest of the flow "
    f"unscanned, so a later drop match cannot apply (AWS-SEMANTICS edge case 8; {ORDER})",
    suricata("""
drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"blocked.example"; startswith; endswith; sid:1;)
pass tcp $HOME_NET any -> 198.51.100.7 443 (sid:2;)
"""),
    tls("blocked.example", hs=ok(sf(2)), at=ok(sf(2)))
    + tls("blocked.example", conn(server=SERVER_B), at=drop("stateful_drop", sf(1))))

scenario(
    "action-order-drop-reject-alert",
    f"action order: drop before reject before alert ({ORDER})",
    suricata("""
alert tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"x.example"; endswith; sid:1;)
reject tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"x.example"; endswith; sid:2;)
drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"a.x.example"; startswith; endswith; sid:3;)
"""),
    tls("a.x.example", at=drop("stateful_drop", sf(3)))
    + tls("b.x.example", at=drop("stateful_reject", sf(2)))
    + tls("c.example", at=PASS))

scenario(
    "action-order-alert-only",
    f"an alert rule logs and lets the packet through ({STATEFUL_RULE}, {ORDER})",
    suricata("""
alert tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"x.example"; endswith; sid:1;)
pass tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"p.x.example"; startswith; endswith; sid:2;)
"""),
    # a pass match stops inspection before any alert rule is reached
    tls("a.x.example", at=ok(alert=sf(1)), after=PASS) + tls("p.x.example", at=ok(sf(2))))

scenario(
    "action-order-priority-keyword",
    f"action order: within one action, the priority keyword orders the rules (lowest first) ({ORDER})",
    suricata("""
drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"p.example"; endswith; priority:5; sid:1;)
drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"p.example"; endswith; priority:1; sid:2;)
"""),
    tls("www.p.example", at=drop("stateful_drop", sf(2))))

scenario(
    "strict-order-first-match",
    f"strict order: rules in the order written, the first match decides ({ORDER})",
    suricata(SAME_NAME, strict=True),
    tls("app.example", at=drop("stateful_drop", sf(1))))

scenario(
    "strict-order-groups-by-priority",
    f"strict order: rule groups by their priority, lowest first ({ORDER}, "
    f"https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_StatefulRuleGroupReference.html)",
    yaml("""network_firewall:
  rule_order: strict_order
  rule_groups:
    - priority: 20
      suricata: |
        drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"app.example"; startswith; endswith; sid:1;)
    - priority: 10
      suricata: |
        pass tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"app.example"; startswith; endswith; sid:2;)
"""),
    tls("app.example", at=ok(sf(2))))

scenario(
    "strict-order-alert-then-drop",
    f"strict order: an alert match does not stop evaluation; the next matching drop decides ({ORDER})",
    suricata("""
alert tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"x.example"; endswith; sid:1;)
drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"x.example"; endswith; sid:2;)
""", strict=True),
    tls("a.x.example", at=drop("stateful_drop", sf(2), alert=sf(1)), after=drop("stateful_drop", sf(2))))

# === Stateful default actions (strict order) ====================================================

PKGS_STRICT = """network_firewall:
  rule_order: strict_order
  stateful_default_actions: [{defaults}]
  rule_groups:
    - domain_list: {{targets: [.pkgs.example], target_types: [tls_sni], type: allowlist}}
"""
DFLT_DROP = drop("stateful_default_drop", DEFAULT)


def to_server(exp: Exp) -> list[Exp]:
    """The established rows after a connection's first message (server reply, client data,
    client FIN, server FIN, client ACK) under drop_established / alert_established, which
    judge established packets toward the server only (egressd's reading of AWS's
    server-directed default actions, rules/README.md; `_app_layer` forms judge both ways)."""
    return [PASS, exp, exp, PASS, exp]


scenario(
    "default-drop-strict",
    f"aws:drop_strict drops every packet no rule passes, the TCP handshake included ({ORDER})",
    yaml(PKGS_STRICT.format(defaults="drop_strict")),
    tls("deb.pkgs.example", hs=DFLT_DROP, at=ok(sf(1))) + ssh(hs=DFLT_DROP, at=DFLT_DROP)
    + udp("udp", CLIENT, SERVER, 40008, 9999, DFLT_DROP, DFLT_DROP))

scenario(
    "default-drop-established",
    f"aws:drop_established lets the handshake through (its last ACK is not yet established, as in "
    f"Suricata) and drops established packets no rule passes ({ORDER})",
    yaml(PKGS_STRICT.format(defaults="drop_established")),
    tls("deb.pkgs.example", at=ok(sf(1))) + tls("evil.test", at=drop("stateful_drop", sf(2)))
    + ssh(hs=PASS, at=DFLT_DROP, after=to_server(DFLT_DROP)))

scenario(
    "default-drop-established-app-layer",
    f"aws:drop_established_app_layer: the handshake passes, established packets no rule passes are "
    f"dropped both ways ({ORDER})",
    yaml(PKGS_STRICT.format(defaults="drop_established_app_layer")),
    tls("deb.pkgs.example", at=ok(sf(1))) + ssh(hs=PASS, at=DFLT_DROP))

scenario(
    "default-alert-strict",
    f"aws:alert_strict logs every packet no rule passes, the handshake included, and drops nothing "
    f"({ORDER})",
    yaml(PKGS_STRICT.format(defaults="alert_strict")),
    tls("deb.pkgs.example", hs=ok(alert=DEFAULT), at=ok(sf(1)))
    + ssh(hs=ok(alert=DEFAULT), at=ok(alert=DEFAULT)))

scenario(
    "default-alert-established",
    f"aws:alert_established logs established packets no rule passes, not the handshake ({ORDER})",
    yaml(PKGS_STRICT.format(defaults="alert_established")),
    tls("deb.pkgs.example", at=ok(sf(1)))
    + ssh(hs=PASS, at=ok(alert=DEFAULT), after=to_server(ok(alert=DEFAULT))))

scenario(
    "strict-pass-rule-passes-its-udp-flow",
    f"a pass rule that matches a DNS query passes the rest of that flow, its response included, before "
    f"any default action ({ORDER}: \"If a packet within a flow matches a rule containing pass action, "
    f"then Suricata doesn't scan the other packets in that flow\")",
    suricata("pass udp $HOME_NET any -> any 53 (sid:1;)", strict=True, defaults="drop_strict"),
    dns("www.example.org", [("www.example.org", "A", "192.0.2.1", 60)], q=ok(sf(1)), r=ok(sf(1)))
    + udp("other udp", CLIENT, SERVER, 40010, 9999, DFLT_DROP, DFLT_DROP))

scenario(
    "default-drop-established-udp",
    f"drop_established on UDP: a flow is established once the other side has answered (Suricata's "
    f"flow:established): the first datagram and its reply pass, the next datagram is dropped ({ORDER})",
    yaml("network_firewall:\n  rule_order: strict_order\n  stateful_default_actions: [drop_established]\n"),
    udp("udp", CLIENT, SERVER, 40009, 9999, PASS, PASS)
    + udp("udp again", CLIENT, SERVER, 40009, 9999, DFLT_DROP))

# === The seed's worked example: a package-download host allowlist, default deny =================

def seed_rows() -> list[Row]:
    """The worked example's traffic (fresh connections for each scenario)."""
    return (tls("deb.pkgs.example", at=ok(sf(1)))
            + http("deb.example.org", path="/debian/dists/bookworm/InRelease", at=ok(sf(4)))
            + tls("security.pkgs.example", at=ok(sf(1)))
            + tls("pkgs.example.evil.test", at=drop("stateful_drop", sf(5)))
            + http("pkgs-example.net", path="/debian/dists/bookworm/InRelease", at=drop("stateful_drop", sf(6)))
            + tls("deb.example.org.evil.test", at=drop("stateful_drop", sf(5)))
            + ssh(hs=PASS, at=DFLT_DROP, after=to_server(DFLT_DROP)))


scenario(
    "seed-package-allowlist-yaml",
    f"the seed's worked example: package hosts allowed (TLS and HTTP), look-alike mirrors dropped, "
    f"default deny (drop_established) ({DOMAINS}, {ORDER})",
    yaml("""network_firewall:
  rule_order: strict_order
  stateful_default_actions: [drop_established]
  rule_groups:
    - name: package-hosts
      domain_list: {targets: [.pkgs.example, deb.example.org], target_types: [tls_sni, http_host], type: allowlist}
"""),
    seed_rows(),
    counters={"flows_passed": 3, "flows_dropped": 3})

scenario(
    "seed-package-allowlist-aws-json",
    f"the same policy as AWS JSON: describe-firewall-policy (STRICT_ORDER, aws:drop_established) and the "
    f"describe-rule-group it references by ARN ({DOMAINS}, {STATELESS_DEFAULTS})",
    [DATA / "seed-firewall-policy.json", DATA / "pkgs-allowlist-strict.json"],
    seed_rows(),
    counters={"flows_passed": 3, "flows_dropped": 3})

# === Route 53 Resolver DNS Firewall ===============================================================

BLOCK = "dns_firewall_block"

scenario(
    "dnsfw-priority-order",
    f"rules are evaluated by priority, lowest first: an ALLOW at 100 wins over a BLOCK at 200 written "
    f"before it ({DNSFW_SETTINGS})",
    yaml("""dns_firewall:
  rules:
    - {priority: 200, domains: ["*.example.com"], action: block, response: nxdomain}
    - {priority: 100, domains: [good.example.com], action: allow}
"""),
    dns("good.example.com", [("good.example.com", "A", "192.0.2.1", 60)])
    + dns("bad.example.com", q=drop(BLOCK, ("dns_firewall", "200")), r=PASS),
    hits={("dns_firewall", "200"): 1})

scenario(
    "dnsfw-allow-stops-evaluation",
    f"ALLOW stops rule evaluation for the query; `*` alone matches every name ({DNSFW_ACTIONS})",
    yaml("""dns_firewall:
  rules:
    - {priority: 100, domains: ["*.corp.example"], action: allow}
    - {priority: 200, domains: ["*"], action: block}
"""),
    dns("git.corp.example") + dns("other.test", q=drop(BLOCK, ("dns_firewall", "200"))))


def _dns_responses(policy: Policy, compiled: CompiledPolicy) -> None:
    """The block response each rule answers with is in the loaded rule and its catalog entry."""
    by_prio = {r.priority: r for r in policy.dns_firewall}
    assert (by_prio[100].response, by_prio[110].response, by_prio[120].response) == \
        ("nxdomain", "nodata", "override")
    assert (by_prio[120].override_name, by_prio[120].override_ttl) == ("walled.example.net", 60)
    texts = {o.ident: o.text for o in compiled.catalog if o.layer == "dns_firewall"}
    assert "nxdomain" in texts["100"] and "nodata" in texts["110"] and "override" in texts["120"]


scenario(
    "dnsfw-block-responses",
    f"BLOCK answers NXDOMAIN, NODATA or OVERRIDE (a CNAME with a TTL); the query does not reach the "
    f"resolver ({DNSFW_ACTIONS})",
    yaml("""dns_firewall:
  rules:
    - {priority: 100, domains: [nx.example], action: block, response: nxdomain}
    - {priority: 110, domains: [nodata.example], action: block, response: nodata}
    - {priority: 120, domains: [ovr.example], action: block, response: override,
       override_cname: walled.example.net, override_ttl: 60}
"""),
    dns("nx.example", q=drop(BLOCK, ("dns_firewall", "100")))
    + dns("nodata.example", q=drop(BLOCK, ("dns_firewall", "110")))
    + dns("ovr.example", q=drop(BLOCK, ("dns_firewall", "120")))
    + dns("open.example"),
    check=_dns_responses)

scenario(
    "dnsfw-alert-logs-and-continues",
    f"ALERT logs the query and evaluation continues with the next rule ({DNSFW_ACTIONS})",
    yaml("""dns_firewall:
  rules:
    - {priority: 100, domains: ["*.example.com"], action: alert}
    - {priority: 200, domains: [bad.example.com], action: block, response: nxdomain}
"""),
    dns("ok.example.com", q=ok(alert=("dns_firewall", "100")))
    + dns("bad.example.com", q=drop(BLOCK, ("dns_firewall", "200"), alert=("dns_firewall", "100")))
    + dns("other.test"))

scenario(
    "dnsfw-wildcard-subdomains-only",
    f"`*.example.com` matches names below example.com (egressd's reading: not the apex, as DNS wildcards "
    f"go; never badexample.com) ({DNSFW_LISTS})",
    yaml("""dns_firewall:
  rules: [{priority: 100, domains: ["*.example.com"], action: block}]
"""),
    dns("example.com") + dns("www.example.com", q=drop(BLOCK, ("dns_firewall", "100")))
    + dns("a.b.example.com", q=drop(BLOCK, ("dns_firewall", "100"))) + dns("badexample.com"))

scenario(
    "dnsfw-query-type-filter",
    f"a rule with a query type (Qtype) matches queries of that type only ({DNSFW_SETTINGS})",
    yaml("""dns_firewall:
  rules: [{priority: 100, domains: [v6only.example], action: block, query_types: [AAAA]}]
"""),
    dns("v6only.example", qtype="A") + dns("v6only.example", qtype="AAAA", q=drop(BLOCK, ("dns_firewall", "100"))))

scenario(
    "dnsfw-domain-list-file-in-yaml",
    f"a rule's domain list from a file of one domain per line ({DNSFW_LISTS})",
    yaml(f"""dns_firewall:
  rules: [{{priority: 100, domain_list_file: {DATA / 'blocked-domains.txt'}, action: block, response: nxdomain}}]
"""),
    dns("malware.example", q=drop(BLOCK, ("dns_firewall", "blocked-domains.txt", "100")))
    + dns("x.tracker.example", q=drop(BLOCK, ("dns_firewall", "100")))
    + dns("tracker.example") + dns("ok.example"))

scenario(
    "dnsfw-domain-list-given-directly",
    f"a domain list file given as a policy blocks its names after every rule of the other files, so an "
    f"ALLOW keeps precedence ({DNSFW_LISTS}, {DNSFW_ACTIONS})",
    yaml("""dns_firewall:
  rules: [{priority: 10, domains: [ok.tracker.example], action: allow}]
""") + [DATA / "blocked-domains.txt"],
    dns("ok.tracker.example") + dns("x.tracker.example", q=drop(BLOCK, ("dns_firewall", "list")))
    + dns("malware.example", q=drop(BLOCK, ("dns_firewall", "blocked-domains.txt", "list"))))

scenario(
    "dnsfw-case-and-trailing-dot",
    f"DNS names compare case-insensitively; the query's root dot is no part of the name ({DNSFW_LISTS})",
    yaml("""dns_firewall:
  rules: [{priority: 100, domains: [Bad.Example.Com], action: block}]
"""),
    dns("BAD.example.COM.", q=drop(BLOCK, ("dns_firewall", "100"))))

# === Resolved-domain rules ========================================================================

S = 1_000_000_000


def _at(rows_: list[Row], t: int) -> list[Row]:
    """The rows timed from t on, 1 ms apart."""
    for k, r in enumerate(rows_):
        r.ts = t + k * 1_000_000
    return rows_


scenario(
    "resolved-domain-keyword",
    f"aws_route_53_resolved_domain matches a connection whose destination was resolved for a listed "
    f"domain (egressd: by a DNS answer it forwarded, within the TTL); an unresolved address does not "
    f"({RESOLVED})",
    suricata('drop tcp $HOME_NET any -> $EXTERNAL_NET any (aws_route_53_resolved_domain:".bad.example"; '
             'flow:to_server; sid:1;)'),
    dns("c2.bad.example", [("c2.bad.example", "A", "203.0.113.9", 30)], ts=0)
    + dns("good.example", [("good.example", "A", "203.0.113.11", 30)], ts=2_000_000)
    + _at(syn("to the resolved address", CLIENT, "203.0.113.9", 443, drop("stateful_drop", sf(1))), 1 * S)
    + _at(syn("to an unresolved address", CLIENT, "203.0.113.10", 443, PASS), 1 * S + 10_000_000)
    + _at(syn("to another name's address", CLIENT, "203.0.113.11", 443, PASS), 1 * S + 20_000_000)
    + _at(syn("after the TTL", CLIENT, "203.0.113.9", 443, PASS), 40 * S))

scenario(
    "resolved-domain-standard-rule-json",
    f"a standard stateful rule (StatefulRules JSON) with the aws_route_53_resolved_domain option passes "
    f"connections to addresses resolved for the package hosts; strict order, drop_established ({RESOLVED})",
    [DATA / "resolved-firewall-policy.json", DATA / "resolved-rules.json"],
    dns("deb.pkgs.example", [("deb.pkgs.example", "CNAME", "edge.cdn.example", 300),
                             ("edge.cdn.example", "A", "198.51.100.7", 300)], q=ok(sf(20)), r=ok(sf(20)))
    + tls("deb.pkgs.example", hs=ok(sf(10)), at=ok(sf(10)))
    + tls("deb.pkgs.example", conn(server=SERVER_B), hs=PASS, at=DFLT_DROP, after=to_server(DFLT_DROP)))

# === SNI resolution (SNI spoofing, domain fronting) ==============================================

def sni_dns() -> list[Row]:
    """www.good.example resolved (through a CNAME) to SERVER."""
    return dns("www.good.example", [("www.good.example", "CNAME", "edge.cdn.example", 300),
                                    ("edge.cdn.example", "A", "198.51.100.7", 300)])



SNI_RULE = ("engine", "sni_resolution")

scenario(
    "sni-resolution-alert",
    f"engine.sni_resolution: alert flags a TLS flow whose SNI no DNS answer seen here resolved to its "
    f"destination ({ISSUE}; AWS's policy-level counterpart: {RESOLVED_POLICY})",
    yaml("engine: {sni_resolution: alert}\n"),
    sni_dns() + tls("www.good.example")
    + tls("www.good.example", conn(server=SERVER_B), at=ok(alert=SNI_RULE), after=PASS)
    + tls("never.example", at=ok(alert=SNI_RULE), after=PASS))

scenario(
    "sni-resolution-drop",
    f"engine.sni_resolution: drop cuts such a flow at its ClientHello ({ISSUE})",
    yaml("engine: {sni_resolution: drop}\n"),
    sni_dns() + tls("www.good.example")
    + tls("www.good.example", conn(server=SERVER_B), at=drop("sni_not_resolved", SNI_RULE))
    + tls("never.example", at=drop("sni_not_resolved", SNI_RULE)),
    counters={"flows_dropped": 2})

scenario(
    "sni-resolution-expires-with-ttl",
    f"a resolution is trusted for its TTL only ({ISSUE}; {RESOLVED_POLICY})",
    yaml("engine: {sni_resolution: drop}\n"),
    dns("short.example", [("short.example", "A", "198.51.100.7", 5)], ts=0)
    + _at(tls("short.example"), 1 * S)
    + _at(tls("short.example", at=drop("sni_not_resolved", SNI_RULE)), 10 * S))

# === ECH =========================================================================================

ECH = ("engine", "ech")

scenario(
    "ech-pass-by-default",
    f"a ClientHello offering ECH (extension 0xfe0d) passes by default ({ISSUE})",
    yaml("network_firewall: {}\n"),
    tls("ech.example", data=with_ech(hello("ech.example"))))

scenario(
    "ech-alert",
    f"engine.ech: alert logs a ClientHello offering ECH ({ISSUE})",
    yaml("engine: {ech: alert}\n"),
    tls("ech.example", data=with_ech(hello("ech.example")), at=ok(alert=ECH), after=PASS) + tls("plain.example"))

scenario(
    "ech-drop",
    f"engine.ech: drop cuts the flow at the ClientHello offering ECH ({ISSUE})",
    yaml("engine: {ech: drop}\n"),
    tls("ech.example", data=with_ech(hello("ech.example")), at=drop("ech_offered", ECH)) + tls("plain.example"),
    counters={"flows_dropped": 1})

# === QUIC judged by TLS_SNI lists ================================================================

scenario(
    "quic-as-tls-denylist",
    f"engine.quic_as_tls: true: a QUIC Initial's SNI is judged by the TLS_SNI domain lists ({ISSUE})",
    domain_list(".blocked.example", "tls_sni", "denylist", engine="quic_as_tls: true"),
    quic("www.blocked.example", at=drop("stateful_drop", sf(1))) + quic("www.ok.example", at=PASS)
    + tls("www.blocked.example", at=drop("stateful_drop", sf(1))))

scenario(
    "quic-untouched-by-default",
    f"without quic_as_tls, QUIC is not TLS: the TLS_SNI list leaves it alone, as AWS's generated `tls` "
    f"rules do ({ISSUE}; {EXAMPLES})",
    domain_list(".blocked.example", "tls_sni", "denylist"),
    quic("www.blocked.example", at=PASS) + tls("www.blocked.example", at=drop("stateful_drop", sf(1))))

scenario(
    "quic-as-tls-allowlist",
    f"quic_as_tls with an allowlist: listed names pass, others are cut at the Initial that completes "
    f"the ClientHello ({ISSUE})",
    domain_list(".ok.example", "tls_sni", "allowlist", engine="quic_as_tls: true"),
    quic("www.ok.example", at=ok(sf(1))) + quic("evil.test", at=drop("stateful_drop", sf(2)))
    + quic("big.evil.test", big=True, at=drop("stateful_drop", sf(2))))

# === IPv6 egress-only ============================================================================

EGRESS_ONLY = drop("egress_only", ("egress_only", "-"))

scenario(
    "ipv6-egress-only",
    f"an egress-only internet gateway lets IPv6 connections out and their replies in, and refuses "
    f"connections initiated from outside; IPv4 is not its business ({EIGW})",
    yaml("engine: {ipv6_egress_only: true}\n"),
    tls("v6.example.org", conn(client=CLIENT6, server=SERVER6))
    + tcp("inbound v6 ssh", conn(22, client=SERVER6, server=CLIENT6), SSH_CLIENT, hs=EGRESS_ONLY, at=EGRESS_ONLY)
    + udp("inbound v6 udp", SERVER6, CLIENT6, 5000, 5000, EGRESS_ONLY, EGRESS_ONLY)
    + ping(SERVER6, CLIENT6, EGRESS_ONLY, EGRESS_ONLY)
    + ping(CLIENT6, SERVER6, PASS, PASS)
    + syn("inbound v4", OTHER, CLIENT, 22, PASS),
    counters={"flows_dropped": 3})

scenario(
    "ipv6-egress-only-off",
    f"without the option, inbound IPv6 connections are not refused ({ISSUE})",
    yaml("network_firewall: {}\n"),
    syn("inbound v6 syn", SERVER6, CLIENT6, 22, PASS))

# === Split ClientHellos: a verdict waits for its name ============================================

DENY_BLOCKED = domain_list(".blocked.example", "tls_sni, http_host", "denylist")
ALLOW_OK = domain_list(".ok.example", "tls_sni, http_host", "allowlist")

scenario(
    "split-3-in-order-denied",
    f"segments before the name is complete are forwarded; the one completing a denied name and all "
    f"after it are dropped ({ISSUE}; {DOMAINS})",
    DENY_BLOCKED,
    tls("www.blocked.example", split=3, at=drop("stateful_drop", sf(1))),
    counters={"packets_forwarded_waiting_for_name": 2, "flows_dropped": 1})

scenario(
    "split-5-shuffled-denied",
    f"out of order: every segment before the ClientHello is whole passes, the completing one is dropped "
    f"({ISSUE})",
    DENY_BLOCKED,
    tls("www.blocked.example", split=5, how="shuffled", at=drop("stateful_drop", sf(1)))
    + tls("www.blocked.example", conn(client=CLIENT6, server=SERVER6), split=4, how="reversed",
          at=drop("stateful_drop", sf(1))),
    batch=2)

scenario(
    "split-4-reversed-allowed",
    f"an allowed name split out of order passes whole (Suricata with AWS's allowlist rules drops the "
    f"first segment; egressd must not) ({ISSUE})",
    ALLOW_OK,
    tls("www.ok.example", split=4, how="reversed", at=ok(sf(1)))
    + tls("www.ok.example", conn(client=CLIENT6, server=SERVER6), split=3, at=ok(sf(1))),
    batch=1, counters={"flows_passed": 2, "flows_dropped": 0})

scenario(
    "split-allowlist-denied-in-order",
    f"allowlist: a non-listed name split in 4 is cut at its last segment ({ISSUE}; {DOMAINS})",
    ALLOW_OK,
    tls("evil.test", split=4, at=drop("stateful_drop", sf(3))))

scenario(
    "split-http-request-denied",
    f"an HTTP request split before its header end: the segment completing the Host header block is "
    f"dropped ({ISSUE}; {DOMAINS})",
    DENY_BLOCKED,
    http("www.blocked.example", split=3, at=drop("stateful_drop", sf(2))),
    counters={"packets_forwarded_waiting_for_name": 2})


def _name_wait(limit: str, value: int) -> Scenario:
    data = hello("www.ok.example")
    parts = pieces(data, 5)
    # the first client segment past the limit ends the wait
    if limit == "name_wait_packets":
        k = value
    else:
        total, k = 0, 0
        while total + len(parts[k][1]) <= value:
            total += len(parts[k][1])
            k += 1
    cut = drop("stateful_drop", sf(3), alert=("engine", "name_wait"))
    c = conn()
    out = rows("handshake", c.handshake(), PASS)
    for j, (off, d) in enumerate(parts):
        out.append(Row(f"segment {j}", c.data(off, d), PASS if j < k else cut if j == k else drop("stateful_drop", sf(3))))
    return Scenario(
        f"split-{limit.replace('_', '-')}-exceeded",
        f"past engine.{limit} without a name the flow is judged without one (counted): an allowlist "
        f"drops it ({ISSUE})",
        domain_list(".ok.example", "tls_sni, http_host", "allowlist", engine=f"{limit}: {value}"),
        out, counters={"flows_judged_without_name": 1, "packets_forwarded_waiting_for_name": k})


SCENARIOS.append(_name_wait("name_wait_packets", 2))
SCENARIOS.append(_name_wait("name_wait_bytes", 250))

# === Suricata rules subset ======================================================================

scenario(
    "suricata-flow-established",
    f"flow:to_server,established: the handshake (its last ACK included) is not established; the first "
    f"data packet is ({EXAMPLES})",
    suricata("drop tcp $HOME_NET any -> $EXTERNAL_NET 22 (flow:to_server,established; sid:1;)"),
    ssh(hs=PASS, at=drop("stateful_drop", sf(1))))

scenario(
    "suricata-startswith-endswith",
    f"tls.sni / http.host content anchored with startswith / endswith ({EXAMPLES})",
    suricata("""
drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"api."; startswith; sid:1;)
drop http $HOME_NET any -> $EXTERNAL_NET any (http.host; content:".evil.test"; endswith; sid:2;)
"""),
    tls("api.example.net", at=drop("stateful_drop", sf(1))) + tls("myapi.example.net")
    + http("x.evil.test", at=drop("stateful_drop", sf(2))) + http("notevil.test") + http("evil.test.example"))

scenario(
    "suricata-dotprefix",
    f"dotprefix + content:\".example.com\" + endswith matches example.com and its subdomains, as AWS's "
    f"generated domain rules use it ({EXAMPLES})",
    suricata('drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; dotprefix; content:".example.com"; '
             'endswith; sid:1;)'),
    tls("example.com", at=drop("stateful_drop", sf(1))) + tls("www.example.com", at=drop("stateful_drop", sf(1)))
    + tls("badexample.com"))

scenario(
    "suricata-nocase",
    f"nocase: the content matches in any case ({EXAMPLES})",
    suricata('drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"Shop.Example.Test"; nocase; '
             'startswith; endswith; sid:1;)'),
    tls("shop.example.test", at=drop("stateful_drop", sf(1)))
    + tls("SHOP.EXAMPLE.test", at=drop("stateful_drop", sf(1))) + tls("shop.example.test.evil"))

scenario(
    "suricata-bidirectional",
    f"`<>` matches packets either way round ({EXAMPLES})",
    suricata("drop udp 203.0.113.5 any <> $HOME_NET 5000 (sid:1;)"),
    udp("inbound to :5000", OTHER, CLIENT, 7000, 5000, drop("stateful_drop", sf(1)))
    + udp("from :5000 outbound", CLIENT, OTHER, 5000, 7001, drop("stateful_drop", sf(1)))
    + udp("from :5001", CLIENT, OTHER, 5001, 7002, PASS, PASS))

scenario(
    "suricata-negated-address-group",
    f"a negated address group matches every address outside it ({EXAMPLES})",
    suricata("drop tcp $HOME_NET any -> ![198.51.100.0/24,203.0.113.0/24] any (sid:1;)"),
    syn("inside the group", CLIENT, SERVER, 443, PASS)
    + syn("outside the group", CLIENT, "192.0.2.9", 443, drop("stateful_drop", sf(1))))

scenario(
    "suricata-home-and-external-net",
    f"$EXTERNAL_NET -> $HOME_NET with flow:to_server drops inbound connections; replies of outbound "
    f"ones are to_client ({EXAMPLES})",
    suricata("drop tcp $EXTERNAL_NET any -> $HOME_NET any (flow:to_server; sid:1;)"),
    syn("inbound", OTHER, CLIENT, 22, drop("stateful_drop", sf(1))) + tls("www.example.org"))

scenario(
    "suricata-reject",
    f"reject drops the flow (and would reset it) ({STATEFUL_RULE})",
    suricata('reject tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"reject.example"; startswith; '
             'endswith; sid:1;)'),
    tls("reject.example", at=drop("stateful_reject", sf(1))))

scenario(
    "suricata-alert-http",
    f"alert on an HTTP Host: the request passes and is logged ({STATEFUL_RULE})",
    suricata('alert http $HOME_NET any -> $EXTERNAL_NET any (http.host; content:"tracker.example"; endswith; '
             'msg:"tracker"; sid:9;)'),
    http("www.tracker.example", at=ok(alert=sf(9)), after=PASS),
    counters={"alerts": 1})

scenario(
    "suricata-port-group",
    f"a port group with a range and a negation ({EXAMPLES})",
    suricata("drop tcp $HOME_NET any -> $EXTERNAL_NET [8000:8100,!8080] (sid:1;)"),
    syn(":8000", CLIENT, SERVER, 8000, drop("stateful_drop", sf(1))) + syn(":8080", CLIENT, SERVER, 8080, PASS)
    + syn(":8100", CLIENT, SERVER, 8100, drop("stateful_drop", sf(1))) + syn(":8101", CLIENT, SERVER, 8101, PASS))

scenario(
    "suricata-dns-query",
    f"dns.query content matches the query name ({EXAMPLES})",
    suricata('drop dns $HOME_NET any -> any any (dns.query; dotprefix; content:".blocked.example"; endswith; sid:1;)'),
    dns("www.blocked.example", q=drop("stateful_drop", sf(1))) + dns("ok.example"))

scenario(
    "suricata-rules-file-given-directly",
    f"a .rules file given as a policy: one stateful group, default variables ($HOME_NET RFC 1918) "
    f"({EXAMPLES})",
    [DATA / "egress.rules"],
    tls("www.blocked.example", at=drop("stateful_drop", sf(100)))
    + http("www.blocked.example", at=drop("stateful_drop", sf(101)))
    + tls("www.example.org"))

scenario(
    "aws-rules-string-with-rule-variables",
    f"a describe-rule-group RulesString with RuleVariables ($HOME_NET, port set $WEB) ({EXAMPLES}; "
    f"https://docs.aws.amazon.com/network-firewall/latest/APIReference/API_RuleVariables.html)",
    [DATA / "rules-string.json"],
    tls("www.blocked.example", at=drop("stateful_drop", sf(1))) + syn("ssh", CLIENT, SERVER, 22, PASS)
    + tls("www.blocked.example", conn(8443), at=PASS)
    + tls("www.blocked.example", conn(client=CLIENT2), at=PASS))


# --- the run ----------------------------------------------------------------------------------

BATCHES = (1, 2, 3, 4, 5, 7, 16)


@dataclass
class Result:
    pipe: Pipeline
    policy: Policy
    compiled: CompiledPolicy
    got: list[Exp]


def _origin(compiled: CompiledPolicy, k: int) -> tuple[str, str, str] | None:
    if k < 0:
        return None
    o = compiled.catalog[k]
    return (o.layer, o.group, o.ident)


def _fit(got: tuple[str, str, str] | None, want: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """`got` in the shape `want` names it: (layer, ident) or (layer, group, ident)."""
    if got is None or want is None or len(want) == 3:
        return got
    return (got[0], got[2])


def run(sc: Scenario, tmp: Path) -> Result:
    paths = []
    for p in sc.policy:
        if isinstance(p, Path):
            paths.append(p)
        else:
            name, text = p
            (tmp / name).write_text(text)
            paths.append(tmp / name)
    policy = load_policies(paths)
    compiled = compile_policy(policy)
    pipe = Pipeline(policy=compiled, flows=FlowConfig(capacity=4096))
    stamps, t = [], 0
    for r in sc.rows:
        t = r.ts if r.ts is not None else t + 1_000_000
        stamps.append(t)
    assert stamps == sorted(stamps), "rows must be in time order"
    capture = write_pcap(tmp / "scenario.pcap", [wrap(r.raw) for r in sc.rows], stamps)
    batch = sc.batch or BATCHES[SCENARIOS.index(sc) % len(BATCHES)]
    got: list[Exp] = []
    with CaptureReader(capture, batch_packets=batch, extra_bytes=pipe.extra_bytes) as reader:
        for b in reader:
            pipe.process(b, reader.extra_base)
            for i in range(b.n):
                r = sc.rows[len(got)]
                got.append(Exp("PASS" if b.verdict[i] == Verdict.PASS else
                               "DROP" if b.verdict[i] == Verdict.DROP else f"verdict {b.verdict[i]}",
                               NAMES[b.reason[i]],
                               _fit(_origin(compiled, int(b.rule[i])), r.exp.rule),
                               _fit(_origin(compiled, int(b.alert[i])), r.exp.alert)))
    assert len(got) == len(sc.rows)
    return Result(pipe, policy, compiled, got)


def _show(e: Exp) -> str:
    return f"{e.verdict} {e.reason} rule={e.rule} alert={e.alert}"


def test_scenario_table() -> None:
    assert len(SCENARIOS) >= 60
    ids = [s.id for s in SCENARIOS]
    assert len(ids) == len(set(ids))
    assert all("http" in s.aws or "issue 5" in s.aws for s in SCENARIOS), "each cites its source"


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario(sc: Scenario, tmp_path: Path) -> None:
    res = run(sc, tmp_path)
    wrong = [f"  row {k} {r.what}: want {_show(r.exp)}\n{' ' * (len(str(k)) + 7)}got  {_show(g)}"
             for k, (r, g) in enumerate(zip(sc.rows, res.got)) if r.exp != g]
    assert not wrong, f"{sc.id}: {sc.aws}\n" + "\n".join(wrong)
    counters = res.pipe.policy.counters()
    assert {k: counters[k] for k in sc.counters} == sc.counters
    if sc.hits is not None:
        hits = {}
        for h in counters["rule_hits"]:
            for key in sc.hits:
                if key == ((h["layer"], h["group"], h["rule"]) if len(key) == 3 else (h["layer"], h["rule"])):
                    hits[key] = hits.get(key, 0) + h["hits"]
        assert hits == sc.hits
    if sc.check:
        sc.check(res.policy, res.compiled)


@pytest.mark.parametrize("strict,established", [("drop_strict", "drop_established_app_layer"),
                                                 ("alert_strict", "alert_established_app_layer")])
def test_strict_and_established_defaults_differ_only_on_handshakes(strict: str, established: str,
                                                                   tmp_path: Path) -> None:
    """The same packets under X_strict and X_established are judged alike except the packets
    of connections not yet established: the TCP handshakes and a UDP flow's first datagram
    (AWS-SEMANTICS edge case 7; ORDER): an allowed flow, a flow a rule drops at its name, a
    flow no rule matches, and UDP."""
    flows = [tls("deb.pkgs.example"), tls("evil.test"), ssh(), udp("udp", CLIENT, SERVER, 40011, 9999, PASS, PASS)]
    packets = [r for f in flows for r in f]
    handshakes = {id(r) for f in flows[:3] for r in f[:3]} | {id(flows[3][0])}
    got = {}
    for mode in (strict, established):
        (tmp_path / mode).mkdir()
        sc = Scenario(mode, ORDER, yaml(PKGS_STRICT.format(defaults=mode)), packets, batch=4)
        got[mode] = run(sc, tmp_path / mode).got
    column = "verdict" if strict.startswith("drop") else "alert"
    differ = {id(r) for r, a, b in zip(packets, got[strict], got[established])
              if getattr(a, column) != getattr(b, column)}
    assert differ == handshakes, [r.what for r in packets if (id(r) in differ) != (id(r) in handshakes)]
