"""engine.parse: inner IPv4 / IPv6 (extension headers), TCP, UDP, ICMP, ICMPv6.

Hand-written packets (scapy) go through the stages as the pipeline runs them, from a
capture: one case per drop reason of the stage, IPv6 extension headers alone and
chained, ICMP errors tied to the tuple they quote, and the 128-bit address columns.
Then hypothesis builds inner packets (random headers, options, extension-header
chains, fragment fields) and breaks them (lengths, bytes, truncation); the numba kernel
must agree with its slow twin on dpkt (reference_parse) on every column.  That part
runs on a batch buffer that ends where the last frame ends, so that under
NUMBA_BOUNDSCHECK=1 a read past a packet raises.

EGRESSD_FUZZ_SCALE scales the example counts (test_boundscheck runs this module again).
"""
from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest,
                                ICMPv6PacketTooBig, ICMPv6ParamProblem, ICMPv6TimeExceeded, IPv6,
                                IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                IPv6ExtHdrRouting)
from scapy.layers.ipsec import AH
from scapy.packet import Packet, Raw

from egressd.engine.batch import COLUMNS, PacketBatch
from egressd.engine.frag import FragConfig, FragTable
from egressd.engine.parse import (PF_FRAGMENT, PF_ICMP_ERROR, PF_IPV6_EXT, PF_MORE_FRAGMENTS,
                                  PF_REASSEMBLED, parse, reparse)
from egressd.engine.pcapio import CaptureReader
from egressd.engine.reasons import N_REASONS, NAMES, STAGES
from egressd.geneve.decap import decap
from gwlb import wrap, write_pcap
from reference_parse import Parsed, reference_parse
from test_decap_differential import fuzz, internet_checksum

# Drop reasons engine.parse gives (inner_empty / inner_version_mismatch are decap's,
# the fragment ones after frag_bad_offset are engine.frag's).
PARSE_REASONS = ("inner_ip_truncated", "inner_ip_bad_header", "inner_ip_bad_length",
                 "inner_ip_bad_checksum", "ipv6_too_many_ext_headers", "ipv6_ext_header_truncated",
                 "ipv6_hop_by_hop_not_first", "ipv6_two_fragment_headers", "tcp_truncated",
                 "tcp_bad_header", "tcp_bad_options", "udp_inner_truncated", "udp_inner_bad_length", "icmp_truncated", "icmp_bad_quote",
                 "frag_tiny", "frag_bad_offset")

C4, S4, R4 = "10.0.0.1", "192.0.2.7", "198.51.100.254"              # client, server, router
C6, S6, R6 = "2001:db8::1", "2001:db8:ffff::7", "2001:db8:aaaa::fe"


# --- running the stages ---------------------------------------------------------------

def columns(b: PacketBatch, i: int) -> dict[str, Any]:
    """Row i as plain values, with the 128-bit addresses joined and the bytes that
    `ip`/`payload` point at (they may live in a reassembly slab, valid for this batch)."""
    row = b.view(i)
    for side in ("src", "dst", "rel_src", "rel_dst"):
        row[side] = row.pop(f"{side}_hi") << 64 | row.pop(f"{side}_lo")
    row["ip_bytes"] = b.buf[row["ip"]:row["ip"] + row["ip_len"]].tobytes()
    row["payload_bytes"] = b.buf[row["payload"]:row["payload"] + row["payload_len"]].tobytes()
    row["frame"] = b.frame(i)
    return row


def drops(counts: np.ndarray) -> dict[str, int]:
    """Drop counts by reason name (slot 0 counts what decap accepted, not a drop)."""
    return {NAMES[r]: int(c) for r, c in enumerate(counts) if r and c}


@dataclass
class Run:
    rows: list[dict[str, Any]]
    counts: dict[str, int]   # drop reason -> packets, for the reasons that occurred
    frag: FragTable


def run_stages(tmp_path: Path, frames: list[bytes], frag: FragConfig | None = None,
               ts_ns: list[int] | None = None, batch_packets: int = 1024) -> Run:
    """The pipeline's stages up to the decision, in-process, on a capture of `frames`:
    decap -> parse -> fragment reassembly -> parse of the reassembled datagrams."""
    path = write_pcap(tmp_path / "stages.pcap", frames, ts_ns)
    table = FragTable(frag)
    counts = np.zeros(N_REASONS, np.uint64)
    rows = []
    with CaptureReader(path, batch_packets=batch_packets,
                       extra_bytes=table.config.pool_bytes) as reader:
        for b in reader:
            decap(b, counts)
            parse(b, counts)
            table.reassemble(b, reader.extra_base, counts)
            reparse(b, counts)
            rows += [columns(b, i) for i in range(b.n)]
    assert len(rows) == len(frames)
    return Run(rows, drops(counts), table)


def parse_one(tmp_path: Path, packet: Packet | bytes) -> dict[str, Any]:
    return run_stages(tmp_path, [wrap(bytes(packet))]).rows[0]


def addr(text: str) -> int:
    """The 128-bit column value of an address: IPv4 as ::ffff:a.b.c.d."""
    a = ipaddress.ip_address(text)
    return int(ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a)


def replace(data: bytes, pos: int, new: bytes) -> bytes:
    return data[:pos] + new + data[pos + len(new):]


# --- every drop reason of the stage, by hand ---------------------------------------------

def v4(**kw: Any) -> IP:
    return IP(src=C4, dst=S4, **kw)


def v6(**kw: Any) -> IPv6:
    return IPv6(src=C6, dst=S6, **kw)


def stack(first: Packet, *layers: Packet) -> Packet:
    for layer in layers:
        first = first / layer
    return first


TCP_NOPS = bytes(TCP(sport=40000, dport=443, options=[("NOP", None)] * 4))  # 24-byte header
ECHO_V4 = bytes(v4() / ICMP(type=8, id=0x4242, seq=1) / Raw(b"ping"))


def tcp_with_options(options: bytes) -> bytes:
    return bytes(v4(proto=6) / Raw(replace(TCP_NOPS, 20, options)))


MALFORMED: list[tuple[str, str, bytes]] = [
    ("inner_ip_truncated", "IPv4 shorter than 20 bytes", bytes(v4() / TCP())[:19]),
    ("inner_ip_truncated", "IPv4 options past the packet",
     replace(bytes(v4(proto=17) / Raw(bytes(8))), 0, b"\x4f\x00\x00\x3c")),
    ("inner_ip_truncated", "IPv6 shorter than 40 bytes", bytes(v6() / UDP())[:39]),
    ("inner_ip_bad_header", "IPv4 header length 16", replace(bytes(v4() / UDP()), 0, b"\x44")),
    ("inner_ip_bad_header", "IPv4 total length below the header", bytes(v4(len=19) / UDP())),
    ("inner_ip_bad_length", "IPv4 total length past the packet", bytes(v4(len=29) / UDP())),
    ("inner_ip_bad_length", "IPv6 payload length past the packet", bytes(v6(plen=9) / UDP())),
    ("inner_ip_bad_checksum", "IPv4 header checksum wrong", bytes(v4(chksum=0x1234) / UDP())),
    ("ipv6_too_many_ext_headers", "nine extension headers",
     bytes(stack(v6(), IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(), *[IPv6ExtHdrDestOpt() for _ in range(7)],
                 UDP()))),
    ("ipv6_ext_header_truncated", "payload ends inside the first 8 bytes",
     bytes(v6(nh=60) / Raw(b"\x11\x00\x00\x00"))),
    ("ipv6_ext_header_truncated", "header length past the payload",
     bytes(v6(nh=60) / Raw(b"\x11\x04" + bytes(6) + bytes(UDP())))),
    ("ipv6_ext_header_truncated", "AH length past the payload",
     bytes(v6(nh=51) / Raw(b"\x11\x06" + bytes(14)))),
    ("ipv6_hop_by_hop_not_first", "destination options, then hop-by-hop",
     bytes(v6() / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP())),
    ("ipv6_two_fragment_headers", "two atomic fragment headers",
     bytes(v6() / IPv6ExtHdrFragment(id=1) / IPv6ExtHdrFragment(id=2) / UDP())),
    ("ipv6_two_fragment_headers", "a first fragment, then another fragment header",
     bytes(v6() / IPv6ExtHdrFragment(m=1, id=3) / IPv6ExtHdrDestOpt()
           / IPv6ExtHdrFragment(offset=2, id=4) / Raw(bytes(16)))),
    ("tcp_truncated", "19 bytes of TCP", bytes(v4(proto=6) / Raw(bytes(TCP())[:19]))),
    ("tcp_truncated", "IPv6, 12 bytes of TCP", bytes(v6(nh=6) / Raw(bytes(TCP())[:12]))),
    ("tcp_bad_header", "data offset 4 words", bytes(v4() / TCP(dataofs=4))),
    ("tcp_bad_header", "data offset past the segment", bytes(v4() / TCP(dataofs=15))),
    ("tcp_bad_options", "option length 0", tcp_with_options(b"\x02\x00\x00\x00")),
    ("tcp_bad_options", "option length 1", tcp_with_options(b"\x01\x03\x01\x00")),
    ("tcp_bad_options", "timestamp option past the header", tcp_with_options(b"\x01\x01\x08\x0a")),
    ("tcp_bad_options", "option kind without a length byte", tcp_with_options(b"\x01\x01\x01\x02")),
    ("udp_inner_truncated", "7 bytes of UDP", bytes(v4(proto=17) / Raw(b"1234567"))),
    ("udp_inner_truncated", "IPv6, no UDP header", bytes(v6(nh=17))),
    ("udp_inner_bad_length", "UDP length 7", bytes(v4() / UDP(len=7) / Raw(b"abc"))),
    ("udp_inner_bad_length", "UDP length past the packet", bytes(v6() / UDP(len=12) / Raw(b"abc"))),
    ("icmp_truncated", "3 bytes of ICMP", bytes(v4(proto=1) / Raw(b"\x08\x00\x00"))),
    ("icmp_truncated", "echo request without identifier",
     bytes(v4(proto=1) / Raw(bytes(ICMP(type=8, id=1))[:6]))),
    ("icmp_truncated", "ICMPv6 error of 7 bytes", bytes(v6(nh=58) / Raw(b"\x01\x04" + bytes(5)))),
    ("icmp_bad_quote", "unreachable quoting IP version 5",
     bytes(v4() / ICMP(type=3, code=3) / Raw(b"\x55" + bytes(27)))),
    ("icmp_bad_quote", "time exceeded quoting 12 bytes of IPv4",
     bytes(v4() / ICMP(type=11) / Raw(bytes(v4() / UDP())[:12]))),
    ("icmp_bad_quote", "ICMPv6 unreachable quoting a short IPv6 header",
     bytes(v6() / ICMPv6DestUnreach() / Raw(bytes(v6() / UDP())[:32]))),
    ("frag_tiny", "first IPv4 fragment with 16 bytes of TCP",
     bytes(v4(flags="MF", proto=6) / Raw(bytes(TCP())[:16]))),
    ("frag_tiny", "first IPv4 fragment ending inside the TCP options",
     bytes(v4(flags="MF", proto=6) / Raw(bytes(TCP(dataofs=10))[:20] + bytes(4)))),
    ("frag_tiny", "first IPv6 fragment with 8 bytes of TCP",
     bytes(v6() / IPv6ExtHdrFragment(nh=6, m=1, id=7) / Raw(bytes(TCP())[:8]))),
    ("frag_tiny", "first IPv4 fragment without data",
     bytes(v4(flags="MF", proto=17))),
    ("frag_tiny", "first IPv6 fragment without data",
     bytes(v6() / IPv6ExtHdrFragment(nh=17, m=1, id=7))),
    ("frag_bad_offset", "IPv4 fragment past 65,535 bytes",
     bytes(v4(frag=8191, proto=17) / Raw(bytes(16)))),
    ("frag_bad_offset", "IPv6 fragment past 65,535 bytes",
     bytes(v6() / IPv6ExtHdrFragment(nh=17, offset=8191, id=7) / Raw(bytes(16)))),
    ("frag_bad_offset", "IPv4 fragment ending at 65,536 bytes",
     bytes(v4(frag=8190, proto=17) / Raw(bytes(16)))),
    ("frag_bad_offset", "IPv6 fragment ending at 65,536 bytes",
     bytes(v6() / IPv6ExtHdrFragment(nh=17, offset=8190, id=7) / Raw(bytes(16)))),
    ("frag_bad_offset", "IPv4 non-final fragment not a multiple of 8 bytes",
     bytes(v4(flags="MF", frag=3, proto=17) / Raw(bytes(12)))),
    ("frag_bad_offset", "first IPv4 fragment with 4 bytes of UDP",  # 8-byte rule before RFC 1858
     bytes(v4(flags="MF", proto=17) / Raw(bytes(4)))),
    ("frag_bad_offset", "IPv6 non-final fragment not a multiple of 8 bytes",
     bytes(v6() / IPv6ExtHdrFragment(nh=17, m=1, id=7) / UDP() / Raw(bytes(4)))),
]


@pytest.mark.parametrize("reason, what, packet", MALFORMED, ids=[m[1] for m in MALFORMED])
def test_malformed_inner_packet(tmp_path: Path, reason: str, what: str, packet: bytes) -> None:
    run = run_stages(tmp_path, [wrap(packet)])
    row = run.rows[0]
    assert (row["reason"], row["verdict"]) == (reason, "DROP"), what
    assert run.counts == {reason: 1}
    assert reference_parse(packet).reason == reason  # the twin knows it too


def test_every_parse_reason_has_a_case(tmp_path: Path) -> None:
    assert {r for r, _, _ in MALFORMED} == set(PARSE_REASONS)
    stages = {STAGES[NAMES.index(r)] for r in PARSE_REASONS}
    assert stages == {"inner", "transport", "fragment"}
    # ... and all of them in one capture: each counted once per packet.
    run = run_stages(tmp_path, [wrap(p) for _, _, p in MALFORMED], batch_packets=7)
    assert [r["reason"] for r in run.rows] == [r for r, _, _ in MALFORMED]
    assert run.counts == Counter(r for r, _, _ in MALFORMED)


# --- well-formed packets ------------------------------------------------------------------

def test_tcp_columns(tmp_path: Path) -> None:
    pkt = v4(id=77) / TCP(sport=40000, dport=443, seq=0xDEADBEEF, ack=0x01020304, flags="PA",
                          options=[("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""),
                                   ("Timestamp", (1, 2))]) / Raw(b"GET / HTTP/1.1\r\n")
    row = parse_one(tmp_path, pkt)
    assert row["reason"] == "ok" and row["verdict"] == "PENDING"
    assert (row["ipver"], row["proto"], row["src"], row["dst"], row["sport"], row["dport"]) == (
        4, 6, addr(C4), addr(S4), 40000, 443)
    assert (row["tcp_seq"], row["tcp_ack"], row["tcp_flags"]) == (0xDEADBEEF, 0x01020304, 0x18)
    assert row["ip_bytes"] == bytes(pkt) and row["payload_bytes"] == b"GET / HTTP/1.1\r\n"
    assert row["l4"] == row["ip"] + 20 and row["payload"] == row["l4"] + IP(bytes(pkt))[TCP].dataofs * 4
    assert row["pflags"] == 0 and row["frag_off"] == 0 and row["frag_id"] == 77


def test_udp_length_shorter_than_the_ip_payload(tmp_path: Path) -> None:
    """RFC 768: the UDP length ends the datagram; what follows is not payload."""
    row = parse_one(tmp_path, v6() / UDP(sport=5353, dport=53, len=11) / Raw(b"abcdef"))
    assert row["reason"] == "ok" and (row["sport"], row["dport"]) == (5353, 53)
    assert row["payload_bytes"] == b"abc" and row["ip_len"] == 40 + 14


def test_total_length_shorter_than_the_capture(tmp_path: Path) -> None:
    """Bytes after the IP total length (padding) are not part of the packet."""
    pkt = bytes(v4() / UDP(sport=1, dport=2) / Raw(b"data"))
    row = parse_one(tmp_path, pkt + b"\0" * 6)
    assert row["reason"] == "ok" and row["ip_len"] == len(pkt) and row["payload_bytes"] == b"data"


def test_other_transport_protocols_pass_unparsed(tmp_path: Path) -> None:
    for pkt, proto in ((v4(proto=47) / Raw(b"\0\0\x08\0gre"), 47), (v6(nh=50) / Raw(bytes(16)), 50),
                       (v6(nh=59), 59), (v6(nh=1) / Raw(b"\x08"), 1)):  # ICMPv4 in IPv6 is not ICMP
        row = parse_one(tmp_path, pkt)
        assert row["reason"] == "ok" and row["proto"] == proto
        assert (row["sport"], row["dport"], row["icmp_type"]) == (0, 0, 0)
        assert row["l4"] == row["payload"] == row["ip"] + (20 if pkt.version == 4 else 40)
        assert row["payload_bytes"] == bytes(pkt)[row["payload"] - row["ip"]:]


def test_ipv4_mapped_and_real_ipv6_addresses(tmp_path: Path) -> None:
    rows = run_stages(tmp_path, [wrap(bytes(p)) for p in (
        v4() / UDP(), IPv6(src=f"::ffff:{C4}", dst=f"::ffff:{S4}") / UDP(), v6() / UDP())]).rows
    mapped = ipaddress.IPv6Address(rows[0]["src"])
    assert mapped.ipv4_mapped == ipaddress.IPv4Address(C4)
    assert rows[0]["src"] >> 64 == 0 and rows[0]["src"] & 0xFFFFFFFF == int(ipaddress.IPv4Address(C4))
    assert ipaddress.IPv6Address(rows[0]["dst"]).ipv4_mapped == ipaddress.IPv4Address(S4)
    # An IPv6 packet between mapped addresses has the same numbers; only ipver tells.
    assert (rows[1]["src"], rows[1]["dst"]) == (rows[0]["src"], rows[0]["dst"])
    assert (rows[0]["ipver"], rows[1]["ipver"]) == (4, 6)
    assert ipaddress.IPv6Address(rows[2]["src"]) == ipaddress.IPv6Address(C6)
    assert ipaddress.IPv6Address(rows[2]["dst"]) == ipaddress.IPv6Address(S6)


# --- IPv6 extension headers ------------------------------------------------------------------

# name -> (protocol number, header); scapy's AH fills neither its next header nor its length.
EXT_HEADERS: dict[str, tuple[int, Callable[[int], Packet]]] = {
    "hop-by-hop": (0, lambda nh: IPv6ExtHdrHopByHop(nh=nh)),
    "routing": (43, lambda nh: IPv6ExtHdrRouting(nh=nh, addresses=[R6, "2001:db8:bbbb::1"])),
    "destination options": (60, lambda nh: IPv6ExtHdrDestOpt(nh=nh)),
    "atomic fragment": (44, lambda nh: IPv6ExtHdrFragment(nh=nh, id=0xABCDEF01)),
    # 12 bytes of header and 12 of ICV: (24 / 4) - 2 (RFC 4302 2.2)
    "AH": (51, lambda nh: AH(nh=nh, payloadlen=4, spi=0x1001, seq=5, icv=bytes(12))),
}


def chain(names: list[str], transport: Packet) -> Packet:
    """IPv6 / the extension headers `names` / transport (TCP or UDP)."""
    nexts = [EXT_HEADERS[name][0] for name in names[1:]] + [6 if isinstance(transport, TCP) else 17]
    return stack(v6(), *[EXT_HEADERS[name][1](nh) for name, nh in zip(names, nexts)], transport)


def assert_like_dpkt(row: dict[str, Any], packet: bytes) -> None:
    """Transport columns as dpkt's own extension-header walk finds them."""
    ip6 = dpkt.ip6.IP6(packet)
    l4 = 40 + sum(e.length for e in ip6.all_extension_headers)
    assert row["reason"] == "ok", row["reason"]
    assert (row["proto"], row["l4"] - row["ip"]) == (ip6.p, l4)
    assert (row["sport"], row["dport"]) == (ip6.data.sport, ip6.data.dport)
    assert row["payload_bytes"] == bytes(ip6.data.data)
    assert row["pflags"] & PF_IPV6_EXT and not row["pflags"] & PF_FRAGMENT


@pytest.mark.parametrize("name", EXT_HEADERS)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_ipv6_extension_header(tmp_path: Path, name: str, transport: str) -> None:
    l4 = TCP(sport=50000, dport=443, flags="S") if transport == "tcp" else UDP(sport=50000, dport=53)
    pkt = bytes(chain([name], l4 / Raw(b"payload!")))
    row = parse_one(tmp_path, pkt)
    assert_like_dpkt(row, pkt)
    assert row["frag_id"] == (0xABCDEF01 if name == "atomic fragment" else 0)


@pytest.mark.parametrize("names", [
    ["hop-by-hop", "destination options", "routing", "atomic fragment", "AH", "destination options"],
    ["hop-by-hop", "routing", "routing", "AH", "AH"],
    ["hop-by-hop"] + ["destination options"] * 7,                                   # 8: the limit
    ["routing", "destination options", "AH", "atomic fragment", "routing", "AH", "destination options",
     "routing"],
])
def test_ipv6_extension_header_chains(tmp_path: Path, names: list[str]) -> None:
    pkt = bytes(chain(names, UDP(sport=1234, dport=4321) / Raw(b"chained")))
    assert_like_dpkt(parse_one(tmp_path, pkt), pkt)


def test_ipv6_nine_extension_headers_refused(tmp_path: Path) -> None:
    eight = ["routing", "destination options", "AH", "atomic fragment", "routing", "AH",
             "destination options", "routing"]
    rows = run_stages(tmp_path, [wrap(bytes(chain(names, UDP()))) for names in (
        eight, eight + ["destination options"], ["hop-by-hop"] + eight)]).rows
    assert [r["reason"] for r in rows] == ["ok", "ipv6_too_many_ext_headers", "ipv6_too_many_ext_headers"]


def test_ipv6_non_first_fragment_after_extension_headers(tmp_path: Path) -> None:
    """After a non-first fragment's header comes data, even if it looks like a header."""
    pkt = bytes(stack(v6(), IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(),
                      IPv6ExtHdrFragment(nh=60, offset=3, id=99), Raw(b"\x3c\x00" + bytes(14))))
    row = parse_one(tmp_path, pkt)
    assert row["reason"] == "ok"
    assert row["pflags"] & (PF_FRAGMENT | PF_IPV6_EXT | PF_MORE_FRAGMENTS) == PF_FRAGMENT | PF_IPV6_EXT
    assert (row["proto"], row["frag_id"], row["frag_off"], row["l4"]) == (60, 99, 24, 0)


@pytest.mark.parametrize("packet", [
    bytes(v4(frag=8190, proto=17) / Raw(bytes(15))),
    bytes(v6() / IPv6ExtHdrFragment(nh=17, offset=8190, id=7) / Raw(bytes(15))),
    bytes(v4(flags="MF", frag=3, proto=17) / Raw(bytes(16))),
    bytes(v6() / IPv6ExtHdrFragment(nh=17, m=1, offset=3, id=7) / Raw(bytes(16))),
    bytes(v4(flags="MF", proto=17) / UDP(len=200) / Raw(bytes(8))),
], ids=["IPv4 last fragment ending at 65,535", "IPv6 last fragment ending at 65,535",
        "IPv4 non-final fragment of two blocks", "IPv6 non-final fragment of two blocks",
        "IPv4 first fragment of two blocks"])
def test_fragments_within_the_rules(tmp_path: Path, packet: bytes) -> None:
    row = parse_one(tmp_path, packet)
    assert row["reason"] == "ok" and row["pflags"] & PF_FRAGMENT
    assert_agrees(row, packet)


# --- ICMP and ICMPv6 ----------------------------------------------------------------------------

def assert_quotes(row: dict[str, Any], sent: Packet) -> None:
    """rel_* hold the tuple of the packet the error quotes, as that packet was sent."""
    ip = sent[IP] if IP in sent else sent[IPv6]
    l4, proto = (sent[TCP], 6) if TCP in sent else (sent[UDP], 17)
    assert row["reason"] == "ok" and row["pflags"] & PF_ICMP_ERROR, row["reason"]
    assert (row["rel_src"], row["rel_dst"]) == (addr(ip.src), addr(ip.dst))
    assert (row["rel_proto"], row["rel_sport"], row["rel_dport"]) == (proto, l4.sport, l4.dport)
    assert (row["sport"], row["dport"]) == (0, 0)


def test_port_unreachable_quoting_udp(tmp_path: Path) -> None:
    sent = v4(id=5) / UDP(sport=33434, dport=53) / Raw(b"query" * 10)
    error = IP(src=S4, dst=C4) / ICMP(type=3, code=3) / Raw(bytes(sent)[:28])  # header + 8 (RFC 792)
    row = parse_one(tmp_path, error)
    assert_quotes(row, sent)
    assert (row["proto"], row["icmp_type"], row["icmp_code"]) == (1, 3, 3)
    assert (row["src"], row["dst"]) == (addr(S4), addr(C4))


def test_time_exceeded_quoting_tcp(tmp_path: Path) -> None:
    sent = v4(ttl=1) / TCP(sport=41000, dport=443, flags="S", options=[("MSS", 1460)])
    error = IP(src=R4, dst=C4) / ICMP(type=11, code=0) / Raw(bytes(sent)[:28])
    row = parse_one(tmp_path, error)
    assert_quotes(row, sent)
    assert (row["icmp_type"], row["icmp_code"]) == (11, 0)


def test_ipv6_packet_too_big_quoting_tcp(tmp_path: Path) -> None:
    sent = v6() / TCP(sport=42000, dport=443, flags="PA") / Raw(bytes(1400))
    # RFC 4443 2.4(c): as much of the packet as fits in the minimum MTU
    error = IPv6(src=R6, dst=C6) / ICMPv6PacketTooBig(mtu=1280) / Raw(bytes(sent)[:1280 - 48])
    row = parse_one(tmp_path, error)
    assert_quotes(row, sent)
    assert (row["proto"], row["icmp_type"], row["ipver"]) == (58, 2, 6)


@pytest.mark.parametrize("kind", [ICMPv6DestUnreach, ICMPv6TimeExceeded])
def test_ipv6_error_quoting_extension_headers(tmp_path: Path, kind: type) -> None:
    sent = chain(["hop-by-hop", "destination options"], UDP(sport=5000, dport=6000) / Raw(b"x"))
    row = parse_one(tmp_path, IPv6(src=S6, dst=C6) / kind() / Raw(bytes(sent)))
    assert_quotes(row, sent)


@pytest.mark.parametrize("packet, ident", [
    (v4() / ICMP(type=8, id=0x1234, seq=9) / Raw(b"abcd"), 0x1234),
    (IP(src=S4, dst=C4) / ICMP(type=0, id=0x1234, seq=9) / Raw(b"abcd"), 0x1234),
    (v6() / ICMPv6EchoRequest(id=0xBEEF, seq=1, data=b"abcd"), 0xBEEF),
    (IPv6(src=S6, dst=C6) / ICMPv6EchoReply(id=0xBEEF, seq=1, data=b"abcd"), 0xBEEF),
])
def test_echo_identifier_is_both_ports(tmp_path: Path, packet: Packet, ident: int) -> None:
    row = parse_one(tmp_path, packet)
    assert row["reason"] == "ok" and (row["sport"], row["dport"]) == (ident, ident)
    assert row["payload_bytes"] == b"abcd" and not row["pflags"] & PF_ICMP_ERROR
    assert row["rel_proto"] == 0


def test_error_quoting_an_echo_request(tmp_path: Path) -> None:
    error = IP(src=R4, dst=C4) / ICMP(type=11) / Raw(ECHO_V4[:28])
    row = parse_one(tmp_path, error)
    assert row["pflags"] & PF_ICMP_ERROR
    assert (row["rel_proto"], row["rel_sport"], row["rel_dport"]) == (1, 0x4242, 0x4242)


def test_error_quoting_a_non_first_fragment_has_no_ports(tmp_path: Path) -> None:
    sent = v4(frag=100, proto=17) / Raw(bytes(range(16)))
    row = parse_one(tmp_path, IP(src=R4, dst=C4) / ICMP(type=11) / Raw(bytes(sent)))
    assert row["pflags"] & PF_ICMP_ERROR
    assert (row["rel_proto"], row["rel_src"], row["rel_sport"], row["rel_dport"]) == (17, addr(C4), 0, 0)


UDP_7000 = UDP(sport=7000, dport=8000)
# (quoted packet, how much of it the error quotes, the error's headers)
QUOTED_FRAGMENTS = {
    # RFC 4443 2.4(c): as much as fits, cut anywhere
    "IPv6 first fragment cut at 100 bytes": (
        v6() / IPv6ExtHdrFragment(nh=17, m=1, id=3) / UDP_7000 / Raw(bytes(1448)), 100,
        IPv6(src=R6, dst=C6) / ICMPv6TimeExceeded()),
    # RFC 8200 4.5: the Parameter Problem sent for a non-final fragment of 8k + 4 bytes
    "IPv6 non-final fragment of 20 bytes": (
        v6() / IPv6ExtHdrFragment(nh=17, m=1, id=4) / UDP_7000 / Raw(bytes(12)), None,
        IPv6(src=S6, dst=C6) / ICMPv6ParamProblem(code=0, ptr=4)),
    "IPv4 first fragment cut at 30 bytes": (
        v4(flags="MF", id=5) / UDP_7000 / Raw(bytes(64)), 30, IP(src=R4, dst=C4) / ICMP(type=11)),
    "IPv4 non-final fragment of 12 bytes": (
        v4(flags="MF", id=6) / UDP_7000 / Raw(bytes(4)), None, IP(src=S4, dst=C4) / ICMP(type=12)),
    # Only the start of what was sent is there: its length field may say anything.
    "IPv4 fragment claiming to end past 65,535": (
        v4(frag=8191, proto=17, len=1500) / Raw(bytes(1480)), 28, IP(src=R4, dst=C4) / ICMP(type=3)),
    "IPv6 fragment ending past 65,535": (
        v6() / IPv6ExtHdrFragment(nh=17, offset=8191, id=8) / Raw(bytes(24)), None,
        IPv6(src=R6, dst=C6) / ICMPv6DestUnreach()),
}


@pytest.mark.parametrize("what", QUOTED_FRAGMENTS)
def test_errors_quoting_fragments_outside_the_rules(tmp_path: Path, what: str) -> None:
    """A quote is not a packet egressd forwards: the fragment rules parse holds its own
    packets to (whole 8-byte blocks, the 65,535-byte end) are not for it."""
    sent, cut, error = QUOTED_FRAGMENTS[what]
    packet = bytes(error / Raw(bytes(sent)[:cut]))
    row = parse_one(tmp_path, packet)
    if UDP not in sent:  # a non-first fragment: no ports to quote
        assert row["reason"] == "ok" and row["pflags"] & PF_ICMP_ERROR, row["reason"]
        assert (row["rel_proto"], row["rel_src"], row["rel_sport"], row["rel_dport"]) == (
            17, addr(sent.src), 0, 0)
    else:
        assert_quotes(row, sent)
    assert_agrees(row, packet)


def test_rows_reused_across_batches_start_clean(tmp_path: Path) -> None:
    """The reader reuses one batch: whatever takes an ICMP error's row next must not
    inherit its quote (or anything else parse filled in)."""
    error = bytes(IP(src=R4, dst=C4) / ICMP(type=11) / Raw(bytes(v4() / UDP_7000)[:28]))
    error6 = bytes(IPv6(src=R6, dst=C6) / ICMPv6TimeExceeded() / Raw(bytes(v6() / UDP_7000)))
    others = [bytes(v4() / TCP(sport=1, dport=2)), ECHO_V4, bytes(v6(nh=59)),
              bytes(v6() / IPv6ExtHdrFragment(nh=17, offset=3, id=7) / Raw(bytes(16)))]
    packets = [p for other in others for p in (error6, error, other)]
    rows = run_stages(tmp_path, [wrap(p) for p in packets], batch_packets=1).rows
    assert [bool(r["pflags"] & PF_ICMP_ERROR) for r in rows] == [True, True, False] * len(others)
    for row, p in zip(rows, packets):
        assert_agrees(row, p)


def test_other_icmp_messages(tmp_path: Path) -> None:
    rows = run_stages(tmp_path, [wrap(bytes(p)) for p in (
        v4() / ICMP(type=13, code=0) / Raw(bytes(12)),      # timestamp: no quote, no ports
        v6(nh=58) / Raw(b"\x87\x00\x00\x00" + bytes(20)),  # neighbour solicitation
    )]).rows
    for row, t in zip(rows, (13, 135)):
        assert row["reason"] == "ok" and row["icmp_type"] == t
        assert (row["sport"], row["dport"], row["pflags"]) == (0, 0, 0)


# --- differential: the kernel against reference_parse on generated packets ----------------------

u8s, u16s, u32s = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)


def exactly(size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size)


@st.composite
def tcp_options(draw: st.DrawFn) -> bytes:
    """Mostly real options, sometimes a bad length or stray bytes; padded to words."""
    option = st.one_of(
        st.sampled_from([b"\x01", b"\x00", b"\x04\x02"]),
        u16s.map(lambda mss: b"\x02\x04" + mss.to_bytes(2, "big")),
        st.integers(0, 14).map(lambda s: bytes([3, 3, s])),
        exactly(8).map(lambda ts: b"\x08\x0a" + ts),
        st.lists(exactly(8), min_size=1, max_size=4).map(
            lambda blocks: bytes([5, 2 + 8 * len(blocks)]) + b"".join(blocks)),
        st.tuples(st.integers(2, 255), u8s, st.binary(max_size=10)).map(
            lambda k: bytes([k[0], k[1]]) + k[2]),
    )
    raw = b"".join(draw(st.lists(option, max_size=8)))[:40]
    return raw + bytes(-len(raw) % 4)


@st.composite
def transports(draw: st.DrawFn, version: int, depth: int) -> tuple[int, bytes]:
    """(protocol number, transport header and payload)."""
    payload = draw(st.binary(max_size=40))
    icmp = 1 if version == 4 else 58
    kind = draw(st.sampled_from(["tcp", "tcp", "udp", "udp", "icmp", "icmp", "other"]))
    if kind == "tcp":
        opts = draw(tcp_options())
        head = struct.pack(">HHIIBBHHH", draw(u16s), draw(u16s), draw(u32s), draw(u32s),
                           (5 + len(opts) // 4) << 4 | draw(st.integers(0, 1)), draw(u8s), draw(u16s),
                           draw(u16s), draw(u16s))
        return 6, head + opts + payload
    if kind == "udp":
        return 17, struct.pack(">HHHH", draw(u16s), draw(u16s), 8 + len(payload), draw(u16s)) + payload
    if kind == "other":
        return draw(st.sampled_from([47, 50, 59, 132, 4, 41, icmp ^ 59]) | u8s), payload
    errors = (3, 4, 5, 11, 12) if version == 4 else (1, 2, 3, 4)
    t = draw(st.sampled_from((0, 8) if version == 4 else (128, 129)) | st.sampled_from(errors) | u8s)
    head = bytes([t, draw(u8s)]) + draw(exactly(6))
    if depth and draw(st.booleans()):  # the quote of an error: a packet, cut somewhere
        quoted = draw(inner_packets(depth=depth - 1))
        payload = quoted[:draw(st.sampled_from([28, 48, 68, len(quoted)]) | st.integers(0, len(quoted)))]
    return icmp, head + payload


@st.composite
def ipv6_extension_headers(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """(kind, header bytes without the next-header byte): mostly hop-by-hop first if at
    all, the others in any order, sometimes more than the engine walks."""
    kinds = draw(st.lists(st.sampled_from([43, 60, 44, 51]), max_size=draw(st.sampled_from([3, 3, 10]))))
    if draw(st.booleans()):
        kinds.insert(draw(st.sampled_from([0, 0, 0]) | st.integers(0, len(kinds))), 0)
    out = []
    for kind in kinds:
        if kind == 44:
            fo = draw(st.sampled_from([0, 1, 1, None])) if draw(st.integers(0, 3)) else None
            fo = draw(st.integers(0, 0xFFFF)) if fo is None else fo  # None: any offset and M
            body = bytes([draw(u8s)]) + fo.to_bytes(2, "big") + draw(exactly(4))
        elif kind == 51:  # length in 4-byte words, minus 2
            words = draw(st.integers(0, 6))
            body = bytes([words]) + draw(exactly((words + 2) * 4 - 2))
        else:  # length in 8-byte units, minus 1
            units = draw(st.integers(0, 3))
            body = bytes([units]) + draw(exactly((units + 1) * 8 - 2))
        out.append((kind, body))
    return out


def whole_blocks(transport: bytes, before: int = 0) -> bytes:
    """`transport` padded so that a non-final fragment carrying `before` bytes and it
    is whole 8-byte blocks: the rest of parse is reached, not just the 8-byte rule."""
    return transport + bytes(-(before + len(transport)) % 8)


@st.composite
def inner_packets(draw: st.DrawFn, depth: int = 1) -> bytes:
    """A well-formed inner IPv4 or IPv6 packet (fragment fields at random)."""
    version = draw(st.sampled_from([4, 6]))
    proto, transport = draw(transports(version, depth))
    if version == 4:
        opts = draw(st.integers(0, 10).flatmap(lambda n: exactly(4 * n)))
        flags_frag = draw(st.sampled_from([0, 0, 0x4000, 0x2000, 0x2000, None]))  # None: any
        flags_frag = draw(u16s) if flags_frag is None else flags_frag
        if flags_frag & 0x2000 and draw(st.booleans()):
            transport = whole_blocks(transport)
        head = struct.pack(">BBHHHBBH4s4s", 0x45 + len(opts) // 4, draw(u8s), 20 + len(opts) + len(transport),
                           draw(u16s), flags_frag, draw(u8s), proto, 0, draw(exactly(4)),
                           draw(exactly(4))) + opts
        return replace(head, 10, internet_checksum(head).to_bytes(2, "big")) + transport
    exts = draw(ipv6_extension_headers())
    frag = next((i for i, (kind, _) in enumerate(exts) if kind == 44), None)
    if frag is not None and exts[frag][1][2] & 1 and draw(st.booleans()):  # M set
        after = sum(1 + len(body) for _, body in exts[frag + 1:])
        transport = whole_blocks(transport, after)
    kinds = [k for k, _ in exts] + [proto]
    chained = b"".join(bytes([kinds[i + 1]]) + body for i, (_, body) in enumerate(exts)) + transport
    return struct.pack(">IHBB16s16s", 0x60000000 | draw(st.integers(0, 0x0FFFFFFF)), len(chained), kinds[0],
                       draw(u8s), draw(exactly(16)), draw(exactly(16))) + chained


@st.composite
def broken_packets(draw: st.DrawFn) -> bytes:
    """A generated packet with 0-3 things made wrong."""
    buf = bytearray(draw(inner_packets()))
    v4 = buf[0] >> 4 == 4
    ihl = (buf[0] & 0x0F) * 4 if v4 else 0
    for kind in draw(st.lists(st.sampled_from(["truncate", "cut", "cut", "flip", "flip", "length",
                                               "fragment", "data_offset", "transport"]), max_size=3)):
        if kind == "truncate":
            del buf[draw(st.integers(1, len(buf))):]
        elif kind == "cut" and len(buf) >= (20 if v4 else 40):  # shorter, the IP length agreeing
            del buf[max(20 if v4 else 40, len(buf) - draw(st.integers(1, 48))):]
            pos, now = (2, len(buf)) if v4 else (4, len(buf) - 40)
            buf[pos:pos + 2] = now.to_bytes(2, "big")
        elif kind == "flip":
            buf[draw(st.integers(0, len(buf) - 1))] ^= draw(st.integers(1, 255))
        elif kind == "length" and len(buf) >= 6:  # IPv4 total length / IPv6 payload length
            pos, now = (2, len(buf)) if v4 else (4, len(buf) - 40)
            near = st.integers(-24, 24).map(lambda d: max(0, now + d))
            buf[pos:pos + 2] = draw(near | u16s).to_bytes(2, "big")
        elif kind == "fragment" and v4 and len(buf) >= 8:
            buf[6:8] = draw(st.sampled_from([0x2000, 0x0001, 0x1FFF, 0x2001]) | u16s).to_bytes(2, "big")
        elif kind == "data_offset" and v4 and ihl + 13 <= len(buf):  # of TCP, if it is
            buf[ihl + 12] = draw(st.integers(0, 15)) << 4 | buf[ihl + 12] & 0x0F
        elif kind == "transport":
            pos = draw(st.integers(min(len(buf) - 1, 20 if v4 else 40), len(buf) - 1))
            buf[pos] = draw(u8s)
    if v4 and len(buf) >= 20 and draw(st.booleans()):  # reach past the checksum check
        ihl = max(20, (buf[0] & 0x0F) * 4)
        if ihl <= len(buf):
            buf[10:12] = b"\0\0"
            buf[10:12] = internet_checksum(bytes(buf[:ihl])).to_bytes(2, "big")
    return bytes(buf)


any_packets = st.one_of(inner_packets(), broken_packets(), broken_packets())


# The columns parse fills, together in batch.COLUMNS.
PARSE_COLUMNS = list(COLUMNS)[list(COLUMNS).index("ip"):list(COLUMNS).index("rel_dport") + 1]


def parse_in_memory(packets: list[bytes]) -> tuple[PacketBatch, np.ndarray]:
    """decap + parse over one batch of GWLB frames around `packets`, in a buffer that
    ends where the last frame ends.  What parse fills starts as junk, as in a batch the
    reader reuses, so a column parse forgets to fill does not match the twin."""
    frames = [wrap(p) for p in packets]
    buf = bytearray(b"".join(frames))
    b = PacketBatch(len(frames), np.frombuffer(buf, np.uint8))
    b.reset(len(frames))
    b.off[:] = np.cumsum([0] + [len(f) for f in frames[:-1]])
    b.caplen[:] = b.wirelen[:] = [len(f) for f in frames]
    b.link[:] = 1
    counts = np.zeros(N_REASONS, np.uint64)
    decap(b, counts)
    for name in PARSE_COLUMNS:
        column = getattr(b, name)
        column[:] = np.iinfo(column.dtype).max
    parse(b, counts)
    return b, counts


def expected(packet: bytes) -> Parsed:
    # GWLB's protocol type follows the version nibble (gwlb.wrap); decap drops the rest.
    if packet[0] >> 4 not in (4, 6):
        return Parsed("inner_version_mismatch")
    return reference_parse(packet)


def assert_agrees(row: dict[str, Any], packet: bytes) -> str:
    want = expected(packet)
    where = f"inner packet {packet.hex()}"
    assert row["reason"] == want.reason, where
    if want.reason != "ok":
        assert row["verdict"] == "DROP", where
        return want.reason
    got = {k: row[k] for k in want.fields}
    ip = row["ip"]
    got["l4"] = row["l4"] - ip if row["l4"] else None
    got["payload"] = row["payload"] - ip if row["l4"] else None
    assert got == want.fields, where
    assert row["verdict"] == "PENDING" and not row["pflags"] & PF_REASSEMBLED, where
    return "ok"


@fuzz(1500)
@given(packets=st.lists(any_packets, min_size=1, max_size=3))
def test_parse_matches_reference(packets: list[bytes]) -> None:
    b, counts = parse_in_memory(packets)
    reasons = [assert_agrees(columns(b, i), p) for i, p in enumerate(packets)]
    for r, flags in zip(reasons, b.pflags):  # --hypothesis-show-statistics: what was reached
        event(r if r != "ok" else "ok, ICMP error" if flags & PF_ICMP_ERROR
              else "ok, fragment" if flags & PF_FRAGMENT else "ok")
    assert drops(counts) == Counter(r for r in reasons if r != "ok")


@fuzz(150)
@given(packets=st.lists(inner_packets(depth=2), min_size=1, max_size=8))
def test_parse_twice_is_parse_once(packets: list[bytes]) -> None:
    """reparse leaves rows engine.frag did not touch as parse left them."""
    b, counts = parse_in_memory(packets)
    before = [columns(b, i) for i in range(b.n)]
    reparse(b, counts)
    assert [columns(b, i) for i in range(b.n)] == before
    for row, p in zip(before, packets):
        assert_agrees(row, p)
