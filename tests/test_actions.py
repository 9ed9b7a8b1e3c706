"""engine.actions: the packets egressd creates, read by tools no one here wrote.

One capture built with scapy holds flows over IPv4 and IPv6 that a policy rejects, or
whose DNS queries DNS Firewall blocks: Suricata `reject tcp` / `reject udp` /
`reject icmp` rules (one of them on the server's reply), a REJECTLIST domain list for
TLS SNI and HTTP Host, DNS Firewall BLOCK with NXDOMAIN, NODATA and OVERRIDE.  Some
frames carry a VLAN tag, outer IPv4 options, a zero outer UDP checksum or a fourth
GENEVE option.  `egressd replay` runs it; the created packets are the frames of OUT
whose inner packet is none of the input's.  Each must be:

- read by tshark with every checksum good (outer and inner IPv4, TCP, UDP, ICMP,
  ICMPv6) and no expert info but a reset's own "Connection reset (RST)": no analysis
  flag (lost segment, out of order, ...), nothing malformed;
- inside a GENEVE header whose tshark geneve.* fields are its trigger's, in a frame
  returned like a forwarded one (MACs and outer IPv4 addresses swapped, GWLB's UDP
  source port kept), stamped with the trigger's time;
- for a reset: the sequence number the endpoint it goes to accepts, computed from what
  that endpoint received (OUT) and sent (IN): its RCV.NXT exactly (RFC 5961 3.2), and
  with ACK set, an ACK of what it sent (RFC 9293 3.10.7.3 for a host in SYN-SENT);
- for an ICMP error: unreachable, administratively prohibited, to the trigger's sender,
  quoting the trigger (IPv4: its header and 8 bytes; IPv6: as much as fits in 1280);
- for a DNS answer: what dnspython takes for the response to the query (id, question),
  with the rcode and answer the rule says.

Rows that ask for a packet and must get none (multicast, DNS over TCP, resets, ICMP
errors, non-initial fragments, garbled and truncated DNS queries, rows whose columns
lie) are counted by cause; hostile rows are fed to the stage through the pipeline
(hypothesis), and test_boundscheck reruns this module with NUMBA_BOUNDSCHECK=1.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRROPT
from scapy.layers.inet import ICMP, IP, UDP, IPOption_Router_Alert, in4_chksum
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, in6_chksum
from scapy.utils import checksum

from conftest import egressd
from gwlb import ENDPOINT, OTHER_ENDPOINT, write_pcap
from helpers_pcap import scapy_records, tshark_pdml
from make_samples import (UNKNOWN_OPTION_CLASS, UNKNOWN_OPTION_TYPE, geneve, geneve_option, gwlb_options,
                          outer_frame, protocol_of)
from test_l7 import SERVER_ISN, Tcp, hello

from egressd.engine.batch import (ACT_DNS_NODATA, ACT_DNS_NXDOMAIN, ACT_DNS_OVERRIDE, ACT_NONE, ACT_REJECT,
                                  PacketBatch)
from egressd.engine.flows import FlowConfig
from egressd.engine.pcapio import CaptureReader
from egressd.engine.pipeline import Pipeline, replay
from egressd.engine.reasons import Verdict
from egressd.rules.compile import CompiledPolicy, compile_policy
from egressd.rules.load import load_policies

SCALE = float(os.environ.get("EGRESSD_FUZZ_SCALE", "1"))
FLOWS = FlowConfig(capacity=4096)
CLIENT, SERVER, RESOLVER, PINGED = "10.1.0.1", "198.51.100.7", "198.51.100.53", "198.51.100.99"
CLIENT6, SERVER6, RESOLVER6, PINGED6 = "2001:db8::1", "2001:db8:1::7", "2001:db8:1::53", "2001:db8:1::99"
OVERRIDE = "walled.example.net"
OVERRIDE_TTL = 60
POLICY = f"""version: 1
home_net: [10.1.0.0/16, 2001:db8::/64]
dns_firewall:
  rules:
    - {{priority: 100, domains: [nx.example], action: block, response: nxdomain}}
    - {{priority: 110, domains: [nodata.example], action: block, response: nodata}}
    - {{priority: 120, domains: ["*.ovr.example"], action: block, response: override,
       override_cname: {OVERRIDE}, override_ttl: {OVERRIDE_TTL}}}
network_firewall:
  rule_groups:
    - domain_list: {{targets: [.rejected.example], target_types: [tls_sni, http_host], type: rejectlist}}
    - suricata: |
        reject tcp $HOME_NET any -> $EXTERNAL_NET 23 (sid:1;)
        reject udp $HOME_NET any -> $EXTERNAL_NET 9999 (sid:2;)
        reject tcp $EXTERNAL_NET 8443 -> $HOME_NET any (flow:to_client,established; sid:3;)
        reject icmp $HOME_NET any -> [{PINGED},{PINGED6}] any (sid:4;)
        reject udp $HOME_NET any -> any 5353 (sid:5;)
"""
RCODE = {"nxdomain": dns.rcode.NXDOMAIN, "nodata": dns.rcode.NOERROR, "override": dns.rcode.NOERROR}
# tshark's expert severity of an error (PI_ERROR) and its checksum statuses
SEVERITY_ERROR = 0x00800000
CHECKSUM_BAD, CHECKSUM_GOOD, CHECKSUM_NOT_PRESENT, CHECKSUM_ILLEGAL = "0", "1", "3", "4"
CHECKSUM_PREFS = ("ip.check_checksum:TRUE", "tcp.check_checksum:TRUE", "udp.check_checksum:TRUE")


# --- the capture --------------------------------------------------------------------------------

@dataclass
class Flow:
    what: str
    packets: list[bytes]                 # inner IP packets
    trigger: int | None = None           # the packet that asks for created packets
    makes: str = ""                      # "rst" (two), "icmp", "nxdomain", "nodata", "override"
    frame: dict = field(default_factory=dict)   # how GWLB's frame differs (see `frame`)
    cookie: int = 0


def frame(inner: bytes, cookie: int, *, vlan: bool = False, ip_options: bool = False,
          udp_zero: bool = False, extra_option: bool = False, other_endpoint: bool = False) -> bytes:
    """GWLB's frame around `inner`, with the variations a created packet must copy."""
    opts = gwlb_options(OTHER_ENDPOINT if other_endpoint else ENDPOINT, cookie)
    if extra_option:  # an option GWLB does not send, not critical: kept, and copied
        opts += geneve_option(UNKNOWN_OPTION_CLASS, UNKNOWN_OPTION_TYPE, b"\x01\x02\x03\x04")
    return outer_frame(geneve(protocol_of(inner), opts) + inner, 40000 + cookie % 20000,
                       vlans=(7,) if vlan else (),
                       ip={"options": [IPOption_Router_Alert()]} if ip_options else None,
                       udp={"chksum": 0} if udp_zero else None)


def ip(src: str, dst: str, **kw):
    return IPv6(src=src, dst=dst, **kw) if ":" in src else IP(src=src, dst=dst, **kw)


def dns_query(qname: str, client: str, server: str, sport: int, qtype: str = "A", *, edns: bool = False,
              cd: bool = False) -> bytes:
    q = DNS(id=(sport * 7919) & 0xFFFF, rd=1, cd=int(cd), qd=DNSQR(qname=qname, qtype=qtype),
            ar=[DNSRROPT(rclass=1232)] if edns else [])
    return bytes(ip(client, server) / UDP(sport=sport, dport=53) / q)


def flows() -> list[Flow]:
    out = []
    for v6 in (False, True):
        client, server = (CLIENT6, SERVER6) if v6 else (CLIENT, SERVER)
        resolver, pinged = (RESOLVER6, PINGED6) if v6 else (RESOLVER, PINGED)
        v = "v6" if v6 else "v4"
        port = 41000 + 100 * v6
        # a REJECTLIST name in a ClientHello split in two: the second segment completes it
        c = Tcp(port, 443, client, server)
        ch = hello("www.rejected.example")
        segments = [c.data(0, ch[:150]), c.data(150, ch[150:])]
        out.append(Flow(f"tls reject {v}", c.handshake() + segments, 4, "rst", {"vlan": v6, "udp_zero": v6}))
        # a SYN a 5-tuple rule rejects: no ACK to take the reset's sequence number from
        c = Tcp(port + 1, 23, client, server)
        out.append(Flow(f"telnet syn {v}", c.handshake()[:1], 0, "rst",
                        {"ip_options": not v6, "extra_option": v6}))
        # the server's reply rejected (flow:to_client): the resets go the other way round
        c = Tcp(port + 2, 8443, client, server)
        reply = c._seg(False, SERVER_ISN + 1, c.isn + 1 + 5, "PA", b"world")   # acknowledging "hello"
        out.append(Flow(f"server reply {v}", c.handshake() + [c.data(0, b"hello"), reply], 4, "rst",
                        {"udp_zero": not v6, "other_endpoint": True}))
        # UDP rejected: ICMP unreachable quoting it (IPv4 with options; IPv6 too long to quote whole)
        head = ip(client, server) if v6 else IP(src=client, dst=server, options=[IPOption_Router_Alert()])
        udp = head / UDP(sport=port + 3, dport=9999) / (bytes(range(256)) * (8 if v6 else 1))
        out.append(Flow(f"udp reject {v}", [bytes(udp)], 0, "icmp", {"vlan": not v6}))
        echo = (IPv6(src=client, dst=pinged) / ICMPv6EchoRequest(id=7, seq=1, data=b"x" * 40) if v6
                else IP(src=client, dst=pinged) / ICMP(type=8, id=7, seq=1) / (b"x" * 40))
        out.append(Flow(f"ping reject {v}", [bytes(echo)], 0, "icmp", {"extra_option": True}))
        # to a multicast group: no ICMP error (RFC 1122 3.2.2); counted
        group = "ff02::fb" if v6 else "224.0.0.251"
        out.append(Flow(f"multicast {v}", [bytes(ip(client, group) / UDP(sport=5353, dport=5353) / b"m")]))
        # DNS Firewall BLOCK answers
        if v6:
            q = dns_query("nodata.example", client, resolver, port + 4, "AAAA", edns=True, cd=True)
            out.append(Flow("nodata AAAA v6 EDNS CD", [q], 0, "nodata"))
            q = dns_query("a.b.ovr.example", client, resolver, port + 5)
            out.append(Flow("override v6", [q], 0, "override", {"ip_options": True, "extra_option": True}))
            c = Tcp(port + 6, 80, client, server)
            req = b"GET / HTTP/1.1\r\nHost: files.rejected.example\r\nAccept: */*\r\n\r\n"
            out.append(Flow("http reject v6", c.handshake() + [c.data(0, req)], 3, "rst"))
        else:
            q = dns_query("nx.example", client, resolver, port + 4)
            out.append(Flow("nxdomain v4", [q], 0, "nxdomain"))
            q = dns_query("WwW.Ovr.Example", client, resolver, port + 5, "TXT", edns=True)
            out.append(Flow("override v4 TXT mixed case", [q], 0, "override", {"vlan": True, "udp_zero": True}))
            out.append(Flow("allowed v4", [dns_query("ok.example", client, resolver, port + 6)]))
            # DNS over TCP blocked by name: no answer (counted)
            c = Tcp(port + 7, 53, client, resolver)
            q = dns_query("nx.example", client, resolver, port + 7)[28:]
            out.append(Flow("dns over tcp v4", c.handshake() + [c.data(0, len(q).to_bytes(2, "big") + q)]))
    for k, f in enumerate(out):
        f.cookie = 0x1000 + k
    return out


EXPECTED_COUNTERS = {
    "rst_to_client": 7, "rst_to_server": 7, "icmp_unreachable": 4, "dns_nodata": 1, "dns_nxdomain": 1,
    "dns_override": 2,
    "not_created": {"reset_answers_reset": 0, "icmp_error": 0, "fragment": 0, "not_unicast": 2,
                    "dns_over_tcp": 1, "dns_not_query": 0, "dns_malformed": 0, "bad_row": 0},
}


# --- reading frames back (dpkt) -----------------------------------------------------------------

@dataclass
class Frame:
    raw: bytes
    ts_ns: int
    eth: dpkt.ethernet.Ethernet
    outer: dpkt.ip.IP
    udp: dpkt.udp.UDP
    geneve: bytes           # GENEVE header and options
    inner: bytes            # the inner IP packet


def parse_frame(raw: bytes, ts_ns: int) -> Frame:
    eth = dpkt.ethernet.Ethernet(raw)
    outer = eth.data
    assert isinstance(outer, dpkt.ip.IP) and isinstance(outer.data, dpkt.udp.UDP)
    g = bytes(outer.data.data)
    end = 8 + (g[0] & 0x3F) * 4
    return Frame(raw, ts_ns, eth, outer, outer.data, g[:end], g[end:])


def read(path: Path) -> list[Frame]:
    _link, recs = scapy_records(path)
    return [parse_frame(r.frame, r.ts_ns) for r in recs]


def inner_ip(b: bytes) -> dpkt.ip.IP | dpkt.ip6.IP6:
    return dpkt.ip6.IP6(b) if b[0] >> 4 == 6 else dpkt.ip.IP(b)


def addrs(p: dpkt.ip.IP | dpkt.ip6.IP6) -> tuple[bytes, bytes]:
    return bytes(p.src), bytes(p.dst)


# --- one replay of the capture, shared by the tests ---------------------------------------------

@dataclass
class Created:
    number: int             # frame number in OUT (tshark counts from 1)
    frame: Frame
    flow: Flow
    index: int              # the trigger's index in IN
    trigger: Frame
    kind: str               # "rst to sender", "rst to receiver", "icmp", "nxdomain", ...


@dataclass
class Run:
    flows: list[Flow]
    inp: Path
    frames_in: list[Frame]
    frames_out: list[Frame]
    created: list[Frame]
    numbers: list[int]      # frame numbers of `created` in OUT
    stats: dict
    pdml_in: list
    pdml_out: list

    def pairs(self) -> list[Created]:
        """Each created packet with the flow and row it answers, as the flows expect them."""
        expected, base = [], 0
        for f in self.flows:
            if f.trigger is not None:
                kinds = ["rst to sender", "rst to receiver"] if f.makes == "rst" else [f.makes]
                expected += [(f, base + f.trigger, k) for k in kinds]
            base += len(f.packets)
        assert len(expected) == len(self.created)
        return [Created(n, c, f, i, self.frames_in[i], k)
                for n, c, (f, i, k) in zip(self.numbers, self.created, expected)]

    def forwarded(self) -> list[Frame]:
        made = set(self.numbers)
        return [f for k, f in enumerate(self.frames_out) if k + 1 not in made]


def write_capture(path: Path, fl: list[Flow]) -> Path:
    frames = [frame(p, f.cookie, **f.frame) for f in fl for p in f.packets]
    return write_pcap(path, frames, [k * 10_000_000 for k in range(len(frames))])


def created_frames(frames_in: list[Frame], frames_out: list[Frame]) -> tuple[list[Frame], list[int]]:
    seen = {f.inner for f in frames_in}
    picked = [(k + 1, f) for k, f in enumerate(frames_out) if f.inner not in seen]
    return [f for _, f in picked], [k for k, _ in picked]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    tmp = tmp_path_factory.mktemp("actions")
    fl = flows()
    inp = write_capture(tmp / "in.pcap", fl)
    (tmp / "policy.yaml").write_text(POLICY)
    out, dropped, stats = tmp / "out.pcap", tmp / "dropped.pcap", tmp / "stats.json"
    res = egressd("replay", inp, "--policy", tmp / "policy.yaml", "--out", out, "--dropped", dropped,
                  "--stats", stats, "--flow-capacity", "4096", "--no-progress")
    assert res.returncode == 0, res.stderr
    frames_in, frames_out = read(inp), read(out)
    created, numbers = created_frames(frames_in, frames_out)
    return Run(fl, inp, frames_in, frames_out, created, numbers, json.loads(stats.read_text()),
               tshark_pdml(inp, *CHECKSUM_PREFS), tshark_pdml(out, *CHECKSUM_PREFS))


@cache
def compiled() -> CompiledPolicy:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "policy.yaml").write_text(POLICY)
        return compile_policy(load_policies([Path(tmp) / "policy.yaml"]))


# --- the tests ---------------------------------------------------------------------------------

def test_created_packets_counted_and_in_trigger_order(run: Run) -> None:
    assert run.stats["policy"]["created"] == EXPECTED_COUNTERS
    pairs = run.pairs()  # as many created packets as expected
    assert [p.kind for p in pairs].count("rst to sender") == 7
    # the created packets follow the batch, in the order of the rows that asked for them
    assert run.numbers == list(range(len(run.frames_out) - len(pairs) + 1, len(run.frames_out) + 1))
    for p in pairs:
        assert p.frame.ts_ns == p.trigger.ts_ns, p.flow.what


def test_tshark_reads_every_created_packet(run: Run, tshark: str) -> None:
    for p in run.pairs():
        f = run.pdml_out[p.number - 1]
        what = f"{p.flow.what} ({p.kind}, frame {p.number})"
        assert "_ws.malformed" not in f, what
        severities = [int(s) for s, _ in f.get("_ws.expert.severity", [])]
        assert all(s < SEVERITY_ERROR for s in severities), what
        messages = [m for m, _ in f.get("_ws.expert.message", [])]
        assert messages == (["Connection reset (RST)"] if p.kind.startswith("rst") else []), what
        assert "tcp.analysis.flags" not in f, what   # lost segment, out of order, zero window, ...
        # outer IPv4 and UDP, then the inner packet: every checksum tshark checks is good
        statuses = {v for k, vals in f.items() if k.endswith("checksum.status") for v, _ in vals}
        assert not statuses & {CHECKSUM_BAD, CHECKSUM_ILLEGAL}, what
        ip_status = [s for s, _ in f["ip.checksum.status"]]
        udp_status = [s for s, _ in f["udp.checksum.status"]]
        outer_udp = CHECKSUM_NOT_PRESENT if p.flow.frame.get("udp_zero") else CHECKSUM_GOOD
        assert ip_status[0] == CHECKSUM_GOOD and udp_status[0] == outer_udp, what
        v6 = p.frame.inner[0] >> 4 == 6
        if not v6:
            assert ip_status[1] == CHECKSUM_GOOD, what
        if p.kind.startswith("rst"):
            assert [s for s, _ in f["tcp.checksum.status"]] == [CHECKSUM_GOOD], what
        elif p.kind == "icmp":
            assert f["icmpv6.checksum.status" if v6 else "icmp.checksum.status"][0][0] == CHECKSUM_GOOD, what
        else:
            assert udp_status[1] == CHECKSUM_GOOD, what
            assert f["dns.flags.response"][0][0] in ("1", "True"), what


def test_encapsulation_is_the_triggers_returned(run: Run) -> None:
    """GENEVE as received (tshark's geneve.* fields), outer headers as return_inplace
    leaves a forwarded packet: MACs and IPv4 addresses swapped, the rest kept."""
    for p in run.pairs():
        c, t = p.frame, p.trigger
        what = f"{p.flow.what} ({p.kind})"
        gc = [(k, v) for k, v in run.pdml_out[p.number - 1].items() if k.startswith("geneve.")]
        gt = [(k, v) for k, v in run.pdml_in[p.index].items() if k.startswith("geneve.")]
        assert gc and gc == gt, what
        assert c.geneve == t.geneve, what
        cookies = [v for _, v in run.pdml_out[p.number - 1]["geneve.option.unknown.data"]]
        assert f"{p.flow.cookie:08x}" in cookies, what
        assert (c.eth.src, c.eth.dst) == (t.eth.dst, t.eth.src), what
        link_c, link_t = len(c.raw) - c.outer.len, len(t.raw) - t.outer.len
        assert c.raw[12:link_c] == t.raw[12:link_t], what          # VLAN tags, ethertype
        assert (c.outer.src, c.outer.dst) == (t.outer.dst, t.outer.src), what
        assert (c.outer.ttl, c.outer.id, c.outer.df, c.outer.tos, c.outer.opts) == \
            (t.outer.ttl, t.outer.id, t.outer.df, t.outer.tos, t.outer.opts), what
        assert (c.udp.sport, c.udp.dport) == (t.udp.sport, 6081), what
        assert (c.udp.sum == 0) == (t.udp.sum == 0), what
        assert c.udp.ulen == 8 + len(c.geneve) + len(c.inner) == c.outer.len - c.outer.hl * 4, what
        assert len(c.inner) <= 1280, what                           # GWLB's inner MTU is 8500


def rcv_nxt(frames: list[Frame], src: tuple[bytes, int], dst: tuple[bytes, int]) -> int | None:
    """Next sequence number `dst` expects from `src` after the segments among `frames`
    (in sequence space from the first one, so ISNs near 2**32 wrap), None if none."""
    first, best = None, 0
    for f in frames:
        p = inner_ip(f.inner)
        if not isinstance(p.data, dpkt.tcp.TCP):
            continue
        s, d = (bytes(p.src), p.data.sport), (bytes(p.dst), p.data.dport)
        if (s, d) != (src, dst):
            continue
        t = p.data
        end = (t.seq + len(t.data) + bool(t.flags & dpkt.tcp.TH_SYN) + bool(t.flags & dpkt.tcp.TH_FIN)) % 2**32
        first = t.seq if first is None else first
        best = max(best, (end - first) % 2**32)
    return None if first is None else (first + best) % 2**32


def test_resets_carry_what_the_endpoints_accept(run: Run) -> None:
    forwarded = run.forwarded()
    for p in run.pairs():
        if not p.kind.startswith("rst"):
            continue
        what = f"{p.flow.what} ({p.kind})"
        rst, trig = inner_ip(p.frame.inner), inner_ip(p.trigger.inner)
        r, t = rst.data, trig.data
        to_sender = p.kind == "rst to sender"
        assert addrs(rst) == (addrs(trig)[::-1] if to_sender else addrs(trig)), what
        assert (r.sport, r.dport) == ((t.dport, t.sport) if to_sender else (t.sport, t.dport)), what
        assert r.flags & dpkt.tcp.TH_RST and not r.flags & ~(dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK), what
        assert len(r.data) == 0 and r.off == 5, what
        me, peer = (bytes(rst.dst), r.dport), (bytes(rst.src), r.sport)
        # what the endpoint the reset goes to received (OUT) and sent (IN, to the trigger)
        heard = rcv_nxt(forwarded, peer, me)
        sent = rcv_nxt(run.frames_in[:p.index + 1], me, peer)
        if heard is not None:
            assert r.seq == heard, f"{what}: seq {r.seq:#x}, the endpoint's RCV.NXT {heard:#x}"
        if r.flags & dpkt.tcp.TH_ACK:
            assert r.ack == sent, f"{what}: ack {r.ack:#x}, the endpoint's SND.NXT {sent}"
        else:
            assert r.ack == 0, what
        if heard is None and sent is not None:
            # in SYN-SENT: a reset counts only if it acknowledges the SYN (RFC 9293 3.10.7.3)
            assert r.flags & dpkt.tcp.TH_ACK, what
        # (a host that never heard of the connection ignores any reset: nothing to check)
        if isinstance(rst, dpkt.ip.IP):
            assert (rst.ttl, rst.df, rst.mf, rst.offset, rst.hl) == (64, 1, 0, 0, 5), what
        else:
            assert (rst.hlim, rst.nxt) == (64, 6), what


def test_icmp_unreachable_quotes_the_trigger(run: Run) -> None:
    ids = set()
    for p in run.pairs():
        if p.kind != "icmp":
            continue
        what = p.flow.what
        err, trig = inner_ip(p.frame.inner), inner_ip(p.trigger.inner)
        assert addrs(err) == addrs(trig)[::-1], what
        body = bytes(err.data)
        if isinstance(err, dpkt.ip.IP):
            assert (err.p, err.ttl, err.df, err.mf, err.offset, err.hl) == (1, 64, 1, 0, 0, 5), what
            assert body[:2] == bytes([3, 13]) and body[4:8] == bytes(4), what
            assert body[8:] == p.trigger.inner[:trig.hl * 4 + 8], what
            assert trig.hl == (6 if "udp" in what else 5), what           # its options quoted too
            ids.add(err.id)
        else:
            assert (err.nxt, err.hlim) == (58, 64), what
            assert body[:2] == bytes([1, 1]) and body[4:8] == bytes(4), what
            assert body[8:] == p.trigger.inner[:1280 - 48], what
            assert len(p.frame.inner) == min(1280, 48 + len(p.trigger.inner)), what
    assert len(ids) == 2  # each IPv4 packet created has its own identification


def test_dns_answers_answer_the_query(run: Run) -> None:
    for p in run.pairs():
        if p.kind not in RCODE:
            continue
        what = p.flow.what
        ans_ip, q_ip = inner_ip(p.frame.inner), inner_ip(p.trigger.inner)
        assert addrs(ans_ip) == addrs(q_ip)[::-1], what
        assert (ans_ip.data.sport, ans_ip.data.dport) == (q_ip.data.dport, q_ip.data.sport), what
        wire_q, wire_a = bytes(q_ip.data.data), bytes(ans_ip.data.data)
        q, a = dns.message.from_wire(wire_q), dns.message.from_wire(wire_a)
        assert q.is_response(a), what
        assert a.id == q.id and a.opcode() == q.opcode() == dns.opcode.QUERY, what
        assert a.flags & dns.flags.QR and a.flags & dns.flags.RA, what
        assert not a.flags & (dns.flags.AA | dns.flags.TC), what
        for bit in (dns.flags.RD, dns.flags.CD):
            assert a.flags & bit == q.flags & bit, what
        assert a.rcode() == RCODE[p.kind], what
        assert a.question == q.question, what
        qlen = len(q.question[0].name.to_wire()) + 4
        assert wire_a[12:12 + qlen] == wire_q[12:12 + qlen], what       # as sent, case and all
        assert not a.authority and not a.additional, what
        if p.kind == "override":
            assert len(a.answer) == 1, what
            rr = a.answer[0]
            assert (rr.name, rr.rdtype, rr.ttl) == (q.question[0].name, dns.rdatatype.CNAME, OVERRIDE_TTL), what
            assert rr[0].target == dns.name.from_text(OVERRIDE), what
            assert wire_a[12 + qlen:12 + qlen + 2] == b"\xc0\x0c", what
        else:
            assert not a.answer, what


def test_batch_size_changes_nothing_created(run: Run, tmp_path: Path) -> None:
    """In-process replay in small batches creates the same bytes, in the same order."""
    for batch in (1, 3, 7):
        out = tmp_path / f"out{batch}.pcap"
        stats = replay(run.inp, out, policy=compiled(), batch_packets=batch, flows=FLOWS)
        created, _ = created_frames(run.frames_in, read(out))
        assert [c.raw for c in created] == [c.raw for c in run.created], batch
        assert stats.policy["created"] == EXPECTED_COUNTERS


def test_long_names_answer_truncated(tmp_path: Path) -> None:
    """An OVERRIDE answer that would pass 512 bytes (question and CNAME both near 255
    octets) goes with TC set and no record (RFC 1035 4.2.1); the question stays whole."""
    target = ".".join(["t" * 60] * 4)                                  # 245 octets in wire form
    qname = ".".join(["q" * 60] * 3 + ["x" * 50]) + ".ovr.example"      # 247 octets
    (tmp_path / "p.yaml").write_text(f"""version: 1
dns_firewall:
  rules: [{{priority: 1, domains: ["*.ovr.example"], action: block, response: override,
           override_cname: {target}, override_ttl: 5}}]
""")
    cp = compile_policy(load_policies([tmp_path / "p.yaml"]))
    short = "s.ovr.example"
    inp = write_pcap(tmp_path / "in.pcap", [frame(dns_query(n, CLIENT, RESOLVER, 5000 + k), 1)
                                            for k, n in enumerate((qname, short))])
    replay(inp, tmp_path / "out.pcap", policy=cp, flows=FLOWS)
    frames_in = read(inp)
    created, _ = created_frames(frames_in, read(tmp_path / "out.pcap"))
    assert len(created) == 2
    for c, t, name in zip(created, frames_in, (qname, short)):
        q = dns.message.from_wire(bytes(inner_ip(t.inner).data.data))
        a = dns.message.from_wire(bytes(inner_ip(c.inner).data.data))
        assert q.is_response(a) and a.question[0].name == dns.name.from_text(name)
        if name == qname:
            assert a.flags & dns.flags.TC and not a.answer and len(inner_ip(c.inner).data.data) <= 512
        else:
            assert not a.flags & dns.flags.TC and a.answer[0][0].target == dns.name.from_text(target)


# --- rows the stage must not answer, fed to it directly ------------------------------------------

def hostile_capture(path: Path) -> tuple[Path, list[bytes]]:
    """DNS queries DNS Firewall blocks (v4, v6), a TCP connection, UDP to a rejected port,
    an ICMP error, a UDP payload with a name over 255 octets."""
    c = Tcp(43000, 443)
    quoted = IP(src=CLIENT, dst=SERVER) / UDP(sport=5, dport=9999)
    err = IP(src=SERVER, dst=CLIENT) / ICMP(type=3, code=3) / quoted
    header = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"                  # RD, one question
    long_name = header + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01"   # 321 octets
    packets = ([dns_query("nx.example", CLIENT, RESOLVER, 6000 + k) for k in range(7)]
               + [dns_query(f"h{k}.ovr.example", CLIENT6, RESOLVER6, 6100 + k, edns=True) for k in range(4)]
               + c.handshake() + [c.data(0, b"GET")]
               + [bytes(IP(src=CLIENT, dst=SERVER) / UDP(sport=6200, dport=9999) / (b"u" * 30)), bytes(err),
                  bytes(IP(src=CLIENT, dst=RESOLVER) / UDP(sport=6201, dport=53) / long_name)])
    return write_pcap(path, [frame(p, 0x2000 + k) for k, p in enumerate(packets)]), packets


def through_stage(path: Path, mutate, batch: int = 64) -> tuple[Pipeline, list[list[bytes]], list[list[bytes]]]:
    """Replay `path`; `mutate(b)` edits each decided batch before engine.actions sees it.
    Returns the pipeline and, per batch, the created frames and (in row order) the UDP
    payloads of the rows that asked for a DNS answer."""
    pipe = Pipeline(policy=compiled(), flows=FLOWS)
    real = pipe.actions.run
    created: list[list[bytes]] = []
    queries: list[list[bytes]] = []

    def run_(b: PacketBatch) -> PacketBatch | None:
        mutate(b)
        queries.append([b.buf[b.payload[i]:b.payload[i] + b.payload_len[i]].tobytes() for i in range(b.n)
                        if b.action[i] >= ACT_DNS_NODATA and b.verdict[i] == Verdict.DROP])
        out = real(b)
        created.append([] if out is None else [out.frame(k) for k in range(out.n)])
        return out

    pipe.actions.run = run_
    with CaptureReader(path, batch_packets=batch, extra_bytes=pipe.extra_bytes) as reader:
        for b in reader:
            pipe.process(b, reader.extra_base)
    return pipe, created, queries


def garble(b: PacketBatch, i: int, how: str) -> None:
    p, n = int(b.payload[i]), int(b.payload_len[i])
    if how == "header cut":
        b.payload_len[i] = 11
    elif how == "a response":
        b.buf[p + 2] |= 0x80
    elif how == "an update":
        b.buf[p + 2] |= 5 << 3
    elif how == "two questions":
        b.buf[p + 5] = 2
    elif how == "name cut":
        b.payload_len[i] = 15
    elif how == "qclass cut":
        b.payload_len[i] = n - 2
    else:
        assert how == "pointer into the header"
        b.buf[p + 12:p + 14] = (0xC0, 0x02)


def test_rows_never_answered_are_counted(tmp_path: Path) -> None:
    path, packets = hostile_capture(tmp_path / "h.pcap")

    def mutate(b: PacketBatch) -> None:
        assert b.n == len(packets)
        row = {b.buf[b.ip[i]:b.ip[i] + b.ip_len[i]].tobytes(): i for i in range(b.n)}
        dns_rows = [i for i in range(b.n) if b.action[i] in (ACT_DNS_NXDOMAIN, ACT_DNS_OVERRIDE)]
        assert len(dns_rows) == 11
        for i, how in zip(dns_rows, ("header cut", "a response", "an update", "two questions", "name cut",
                                     "qclass cut", "pointer into the header")):
            garble(b, i, how)
        b.rule[dns_rows[7]] = -1                    # an OVERRIDE without its rule
        b.ip_len[dns_rows[8]] += 20                 # an IP length past its frame
        b.frag_off[dns_rows[9]] = 1480              # a non-initial fragment
        # dns_rows[10] stays whole: answered
        syn_ack, ack, data, udp, icmp_error, long_name = (row[p] for p in packets[-6:])
        b.tcp_flags[data] |= 0x04                   # a reset is never answered with one
        for i in (syn_ack, ack, data, udp, icmp_error):
            b.verdict[i], b.action[i] = Verdict.DROP, ACT_REJECT
        b.verdict[long_name], b.action[long_name], b.rule[long_name] = Verdict.DROP, ACT_DNS_NXDOMAIN, 0

    pipe, created, _ = through_stage(path, mutate)
    c = pipe.actions.counters()
    assert c["not_created"] == {"reset_answers_reset": 1, "icmp_error": 1, "fragment": 1, "not_unicast": 0,
                                "dns_over_tcp": 0, "dns_not_query": 2, "dns_malformed": 6,
                                "bad_row": 2}
    # answered: the whole query, the SYN-ACK and the ACK (two resets each), the UDP datagram
    assert (c["dns_override"], c["rst_to_client"], c["rst_to_server"], c["icmp_unreachable"]) == (1, 2, 2, 1)
    assert sum(map(len, created)) == 6


def checksums_good(inner: bytes) -> bool:
    """Every checksum of the headers of `inner` itself verifies, by scapy's checksum
    routines over the exact bytes (a packet quoted by an ICMP error keeps its own)."""
    if inner[0] >> 4 == 6:
        p = IPv6(inner)
        return in6_chksum(p.nh, p, inner[40:]) == 0
    p, hl = IP(inner), (inner[0] & 0x0F) * 4
    seg = inner[hl:p.len]
    return checksum(inner[:hl]) == 0 and (checksum(seg) if p.proto == 1 else in4_chksum(p.proto, p, seg)) == 0


@settings(max_examples=max(10, int(120 * SCALE)), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_hostile_rows(data: st.DataObject) -> None:
    """Random actions on random rows, garbled bytes and lying columns: nothing raises,
    every acting row is answered or counted, and what is answered is well formed: its
    checksums verify (scapy), dnspython reads the DNS answers, each with the id and
    question of a query that asked for it, in row order."""
    draw = data.draw
    acting: list[int] = []
    n_catalog = len(compiled().catalog)

    def mutate(b: PacketBatch) -> None:
        for _ in range(draw(st.integers(0, 6))):
            i = draw(st.integers(0, b.n - 1))
            b.verdict[i] = Verdict.DROP
            b.action[i] = draw(st.integers(ACT_REJECT, ACT_DNS_OVERRIDE))
            b.rule[i] = draw(st.integers(-2, n_catalog + 2))
        for i in range(b.n):
            if b.action[i] == ACT_NONE or not draw(st.booleans()):
                continue
            which = draw(st.sampled_from(["payload", "payload_len", "ip_len", "flags", "l4", "frag"]))
            if which == "payload" and b.payload_len[i]:
                for _ in range(draw(st.integers(1, 6))):
                    at = b.payload[i] + draw(st.integers(0, int(b.payload_len[i]) - 1))
                    b.buf[at] = draw(st.integers(0, 255))
            elif which == "payload_len":
                b.payload_len[i] = draw(st.integers(0, int(b.payload_len[i]) + 64))
            elif which == "ip_len":
                b.ip_len[i] = draw(st.integers(0, int(b.ip_len[i]) + 64))
            elif which == "flags":
                b.tcp_flags[i] = draw(st.integers(0, 255))
            elif which == "l4":
                b.l4[i] += draw(st.integers(-64, 64))
            elif which == "frag":
                b.frag_off[i] = draw(st.sampled_from([8, 65528]))
        acting.append(int(np.count_nonzero((b.action[:b.n] != ACT_NONE) & (b.verdict[:b.n] == Verdict.DROP))))

    with tempfile.TemporaryDirectory() as tmp:
        path, _ = hostile_capture(Path(tmp) / "h.pcap")
        pipe, created, queries = through_stage(path, mutate, draw(st.sampled_from([1, 4, 64])))
    c = pipe.actions.counters()
    rst = c["rst_to_client"] + c["rst_to_server"]
    made = rst + c["icmp_unreachable"] + c["dns_nodata"] + c["dns_nxdomain"] + c["dns_override"]
    assert rst % 2 == 0
    assert sum(acting) == sum(c["not_created"].values()) + made - rst // 2
    assert sum(map(len, created)) == made
    for frames_, asked in zip(created, queries):
        for raw in frames_:
            f = parse_frame(raw, 0)
            assert len(f.inner) <= 1280
            assert checksums_good(f.inner), f.inner.hex()
            p = inner_ip(f.inner)
            if not isinstance(p.data, dpkt.udp.UDP):
                continue
            wire = bytes(p.data.data)
            a = dns.message.from_wire(wire)
            qlen = len(a.question[0].name.to_wire()) + 4
            while asked and not (asked[0][:2] == wire[:2] and asked[0][12:12 + qlen] == wire[12:12 + qlen]):
                asked.pop(0)
            assert asked, f"no query asked for {a}"
            asked.pop(0)
