"""engine.frag: bounded reassembly of inner IPv4 / IPv6 fragments, for inspection.

Datagrams are cut with scapy (fragment / fragment6) or by hand and run through the
pipeline's stages from a capture (test_parse.run_stages).  The row that completes a
datagram must point at the datagram as its sender built it, in whatever order and
however many times the fragments come; the limits (fragments, datagrams, time) and
the policy modes (AWS's stateless default action for fragments) must hold, failing
closed (a fragment that cannot be inspected is dropped, and so is every later fragment
of a datagram that broke the rules); and `egressd replay` must return every fragment
as it came.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                IPv6ExtHdrRouting, fragment6)
from scapy.packet import Packet, Raw
from scapy.utils import RawPcapReader

from conftest import egressd
from egressd.engine.frag import FragConfig, FragMode
from egressd.engine.parse import PF_FRAGMENT, PF_IPV6_EXT, PF_MORE_FRAGMENTS, PF_REASSEMBLED
from gwlb import OTHER_ENDPOINT, wrap, write_pcap
from make_samples import client_hello
from test_parse import C4, C6, S4, S6, Run, addr, run_stages

SECOND = 1_000_000_000


@dataclass
class Datagram:
    """A datagram as sent (`whole`), what the network made of it, and what parse
    should find in it."""

    whole: bytes
    fragments: list[bytes]
    proto: int
    sport: int
    dport: int
    payload: bytes
    src: str
    dst: str


def payload_of(label: str, size: int) -> bytes:
    return (label.encode() * (size // len(label) + 1))[:size]


def split(whole: bytes, first: int, size: int) -> list[bytes]:
    """IPv4 fragments of `whole`: `first` bytes of data, then `size` at a time."""
    ip = IP(whole)
    data = bytes(ip.payload)
    bounds = [0, *range(first, len(data), size), len(data)]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        head = ip.copy()
        head.remove_payload()
        head.flags, head.frag, head.len, head.chksum = "MF" if hi < len(data) else 0, lo // 8, None, None
        out.append(bytes(head / Raw(data[lo:hi])))
    return out


def v4_datagram(ident: int, l4: Packet, payload: bytes, size: int = 256, src: str = C4,
                first: int | None = None) -> Datagram:
    whole = IP(src=src, dst=S4, id=ident) / l4 / Raw(payload)
    frags = [bytes(f) for f in fragment(whole, fragsize=size)] if first is None else \
        split(bytes(whole), first, size)
    built = IP(bytes(whole))
    return Datagram(bytes(whole), frags, built.proto, built.sport, built.dport, payload, src, S4)


def v6_datagram(ident: int, l4: Packet, payload: bytes, size: int = 320,
                unfragmentable: tuple[Packet, ...] = (IPv6ExtHdrHopByHop(),),
                fragmentable: tuple[Packet, ...] = ()) -> Datagram:
    """IPv6 / unfragmentable headers / fragment header / fragmentable headers / l4;
    `whole` is the datagram without the fragment header (RFC 8200 4.5)."""
    def build(*middle: Packet) -> Packet:
        pkt = IPv6(src=C6, dst=S6)
        for layer in (*unfragmentable, *middle, *fragmentable, l4, Raw(payload)):
            pkt = pkt / layer.copy()
        return pkt
    frags = [bytes(f) for f in fragment6(build(IPv6ExtHdrFragment(id=ident)), size)]
    whole = build()
    built = IPv6(bytes(whole))
    return Datagram(bytes(whole), frags, 6 if TCP in built else 17, built.sport, built.dport, payload,
                    C6, S6)


def counters(**nonzero: int) -> dict[str, int]:
    return {"reassembled": 0, "overlaps": 0, "timed_out": 0, "poisoned": 0,
            **nonzero}


def reasons(run: Run) -> list[str]:
    return [r["reason"] for r in run.rows]


def completing(run: Run) -> list[int]:
    return [i for i, r in enumerate(run.rows) if r["pflags"] & PF_REASSEMBLED]


def assert_is_datagram(row: dict[str, Any], d: Datagram) -> None:
    """The completing row points at the whole datagram and parse read it as one."""
    assert row["verdict"] == "PENDING", row["reason"]
    assert row["ip_bytes"] == d.whole
    assert (row["proto"], row["src"], row["dst"], row["sport"], row["dport"]) == (
        d.proto, addr(d.src), addr(d.dst), d.sport, d.dport)
    assert row["payload_bytes"] == d.payload
    assert not row["pflags"] & (PF_FRAGMENT | PF_MORE_FRAGMENTS)


def v4_tcp(ident: int = 0x1234, size: int = 256) -> Datagram:
    return v4_datagram(ident, TCP(sport=40001, dport=443, seq=1000, ack=2000, flags="PA"),
                       payload_of("v4-tcp/", 1500), size)


def v4_udp(ident: int = 0x2345, src: str = C4) -> Datagram:
    return v4_datagram(ident, UDP(sport=5353, dport=53), payload_of("v4-udp/", 900), src=src)


def v6_udp(ident: int = 0x3456) -> Datagram:
    return v6_datagram(ident, UDP(sport=5000, dport=6000), payload_of("v6-udp/", 1500))


def v6_tcp(ident: int = 0x4567) -> Datagram:
    return v6_datagram(ident, TCP(sport=40002, dport=443, flags="PA"), payload_of("v6-tcp/", 1000),
                       unfragmentable=(IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(addresses=[S6])))


DATAGRAMS = {"ipv4-tcp": v4_tcp, "ipv4-udp": v4_udp, "ipv6-udp": v6_udp, "ipv6-tcp": v6_tcp}


def ordered(frags: list[bytes], order: str) -> tuple[list[bytes], int]:
    """(fragments in `order`, duplicates before the datagram is whole).  A duplicate
    after it is whole starts a new datagram that never completes (as in a receiver)."""
    if order == "in order":
        return frags, 0
    if order == "reversed":
        return frags[::-1], 0
    if order == "shuffled":
        out = frags[:]
        random.Random(7).shuffle(out)
        return out, 0
    # duplicates: the first fragment again early, the second again after the last
    return [frags[0], frags[1], frags[0], *frags[2:], frags[1]], 1


@pytest.mark.parametrize("order", ["in order", "reversed", "shuffled", "duplicates"])
@pytest.mark.parametrize("kind", DATAGRAMS)
def test_reassembled_datagram_is_the_original(tmp_path: Path, kind: str, order: str) -> None:
    d = DATAGRAMS[kind]()
    assert len(d.fragments) >= 4
    frags, early = ordered(d.fragments, order)
    run = run_stages(tmp_path, [wrap(f) for f in frags])
    last_new = max(frags.index(f) for f in d.fragments)  # where the last missing piece comes
    assert completing(run) == [last_new]
    assert_is_datagram(run.rows[last_new], d)
    ext = PF_IPV6_EXT if kind.startswith("ipv6") else 0
    assert run.rows[last_new]["pflags"] == PF_REASSEMBLED | ext
    for i, (row, f) in enumerate(zip(run.rows, frags)):
        assert row["frame"] == wrap(f)  # reassembly copies; the fragment goes back as it came
        if i != last_new:
            assert row["verdict"] == "PENDING" and row["pflags"] & PF_FRAGMENT
            assert row["ip_bytes"] == f
    assert run.counts == {}
    assert run.frag.counters() == counters(reassembled=1, overlaps=early)


def test_concurrent_datagrams_across_batches(tmp_path: Path) -> None:
    """Several datagrams at once, interleaved, two packets a batch.  Two of them share
    addresses and identification but come from different GWLB endpoints: they are
    different datagrams."""
    datagrams = [v4_tcp(), v4_udp(), v6_udp(), v6_tcp(), v4_tcp(ident=0x1235), v4_udp(src="10.0.0.99")]
    other = v4_datagram(0x2345, UDP(sport=5353, dport=53), payload_of("other endpoint/", 900))
    tagged = [(n, f, wrap(f)) for n, d in enumerate(datagrams) for f in d.fragments]
    tagged += [(len(datagrams), f, wrap(f, endpoint=OTHER_ENDPOINT)) for f in other.fragments]
    datagrams.append(other)
    random.Random(11).shuffle(tagged)
    run = run_stages(tmp_path, [frame for _, _, frame in tagged], batch_packets=2)
    done = completing(run)
    assert sorted(tagged[i][0] for i in done) == list(range(len(datagrams)))
    for i in done:
        assert_is_datagram(run.rows[i], datagrams[tagged[i][0]])
    assert run.frag.counters()["reassembled"] == len(datagrams) and run.counts == {}


# --- overlaps ----------------------------------------------------------------------------------

def raw_fragment(family: int, ident: int, offset: int, more: bool, data: bytes, proto: int = 17) -> bytes:
    if family == 4:
        return bytes(IP(src=C4, dst=S4, id=ident, proto=proto, flags="MF" if more else 0,
                        frag=offset // 8) / Raw(data))
    return bytes(IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(nh=proto, id=ident, offset=offset // 8,
                                                           m=int(more)) / Raw(data))


def whole_datagram(family: int, ident: int, data: bytes) -> bytes:
    if family == 4:
        return bytes(IP(src=C4, dst=S4, id=ident, proto=17) / Raw(data))
    return bytes(IPv6(src=C6, dst=S6, nh=17) / Raw(data))


UDP_DATA = bytes(UDP(sport=1000, dport=2000, len=48)) + payload_of("abcdefgh", 40)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("first", ["original", "rewrite"])
def test_overlap_first_wins(tmp_path: Path, family: int, first: str) -> None:
    """Two fragments carry different bytes for [16, 24): whichever came first is kept."""
    original = raw_fragment(family, 77, 0, True, UDP_DATA[:24])
    rewrite = raw_fragment(family, 77, 16, True, b"REWRITE!" + UDP_DATA[24:40])
    last = raw_fragment(family, 77, 40, False, UDP_DATA[40:])
    frags = [original, rewrite, last] if first == "original" else [rewrite, original, last]
    run = run_stages(tmp_path, [wrap(f) for f in frags])
    assert completing(run) == [2]
    data = UDP_DATA if first == "original" else UDP_DATA[:16] + b"REWRITE!" + UDP_DATA[24:]
    assert run.rows[2]["ip_bytes"] == whole_datagram(family, 77, data)
    assert run.rows[2]["payload_bytes"] == data[8:]
    assert run.frag.counters()["overlaps"] == 1


# --- limits ------------------------------------------------------------------------------------

def test_too_many_fragments_poison_the_datagram(tmp_path: Path) -> None:
    """The fragment over the limit and every later one of its datagram are dropped
    (a receiver could rebuild the datagram from what passed); other datagrams go on."""
    d = v4_udp()
    other = v6_datagram(0x3456, UDP(sport=5000, dport=6000), payload_of("v6-udp/", 500))
    assert (len(d.fragments), len(other.fragments)) == (4, 2)
    frags = [*d.fragments[:3], other.fragments[0], d.fragments[3], d.fragments[0],
             *other.fragments[1:], d.fragments[2]]
    run = run_stages(tmp_path, [wrap(f) for f in frags], FragConfig(max_fragments=4))
    assert completing(run) == [4, len(frags) - 2] and run.counts == {}
    run = run_stages(tmp_path, [wrap(f) for f in frags], FragConfig(max_fragments=3))
    assert reasons(run) == ["ok"] * 4 + ["frag_too_many"] * 2 + ["ok"] * (len(other.fragments) - 1) \
        + ["frag_too_many"]
    assert completing(run) == [len(frags) - 2]
    assert run.counts == {"frag_too_many": 3}
    assert run.frag.counters() == counters(reassembled=1, poisoned=1)


def test_full_table_drops_new_datagrams(tmp_path: Path) -> None:
    """With every context busy, a new datagram's fragments are dropped (fail closed)
    and the datagrams in flight are left alone; once they are done, it gets a context."""
    d1, d2, d3 = v4_udp(1), v6_udp(2), v4_udp(3)
    first = [d1.fragments[0], d2.fragments[0], *d3.fragments, *d1.fragments[1:], *d2.fragments[1:]]
    frags = first + d3.fragments  # sent again, in a batch of its own
    run = run_stages(tmp_path, [wrap(f) for f in frags], FragConfig(max_datagrams=2),
                     batch_packets=len(first))
    n3 = len(d3.fragments)
    assert reasons(run) == ["ok", "ok"] + ["frag_table_full"] * n3 + ["ok"] * (len(frags) - 2 - n3)
    assert [run.rows[i]["ip_bytes"] for i in completing(run)] == [d1.whole, d2.whole, d3.whole]
    assert run.counts == {"frag_table_full": n3}
    assert run.frag.counters() == counters(reassembled=3)


def test_full_table_reuses_expired_contexts(tmp_path: Path) -> None:
    """A context past its timeout is free for the next datagram, not a reason to drop."""
    d1, d2 = v4_udp(1), v4_udp(2)
    frags = [d1.fragments[0], d2.fragments[0], *d2.fragments]
    times = [0, SECOND // 2] + [2 * SECOND + i for i in range(len(d2.fragments))]
    run = run_stages(tmp_path, [wrap(f) for f in frags],
                     FragConfig(max_datagrams=1, timeout_s=1.0), ts_ns=times)
    assert reasons(run) == ["ok", "frag_table_full"] + ["ok"] * len(d2.fragments)
    assert [run.rows[i]["ip_bytes"] for i in completing(run)] == [d2.whole]
    assert run.frag.counters() == counters(reassembled=1, timed_out=1)


@pytest.mark.parametrize("spread_s, completes", [(0.9, True), (1.5, False)])
def test_fragment_timeout(tmp_path: Path, spread_s: float, completes: bool) -> None:
    """The timeout runs from a datagram's first fragment."""
    d = v6_udp()
    times = [int(spread_s * SECOND * i / (len(d.fragments) - 1)) for i in range(len(d.fragments))]
    run = run_stages(tmp_path, [wrap(f) for f in d.fragments], FragConfig(timeout_s=1.0), ts_ns=times)
    assert bool(completing(run)) == completes
    assert run.frag.counters()["timed_out"] == (0 if completes else 1)
    assert all(r["verdict"] == "PENDING" for r in run.rows)


UDP_24 = bytes(UDP(sport=1000, dport=2000, len=24)) + payload_of("ijklmnop", 16)


def pieces(family: int) -> list[bytes]:
    """UDP_24 in three fragments."""
    return [raw_fragment(family, 9, lo, lo < 16, UDP_24[lo:lo + 8]) for lo in (0, 8, 16)]


# what comes before the fragment that breaks the datagram's end, and that fragment
INCONSISTENT = {
    "a second, different end": lambda f: ([pieces(f)[2]], raw_fragment(f, 9, 24, False, bytes(8))),
    "data past the known end": lambda f: ([pieces(f)[2]], raw_fragment(f, 9, 24, True, bytes(8))),
    "an end before data already seen": lambda f: ([raw_fragment(f, 9, 24, True, bytes(8))], pieces(f)[2]),
}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("case", INCONSISTENT)
def test_inconsistent_ends_poison_the_datagram(tmp_path: Path, family: int, case: str) -> None:
    """Which end a receiver believes is up to it: the datagram cannot be inspected as
    the receiver sees it, so none of it passes from then on, not even fragments that
    would complete it, until its context times out."""
    before, bad = INCONSISTENT[case](family)
    frags = [*before, bad, *pieces(family), *pieces(family)]
    times = [i * SECOND for i in range(len(frags) - 3)] + [100 * SECOND + i for i in range(3)]
    run = run_stages(tmp_path, [wrap(f) for f in frags], FragConfig(timeout_s=30), ts_ns=times)
    assert reasons(run) == ["ok"] * len(before) + ["frag_inconsistent"] * 4 + ["ok"] * 3
    assert completing(run) == [len(frags) - 1]  # once timed out, a datagram like any other
    assert run.rows[-1]["ip_bytes"] == whole_datagram(family, 9, UDP_24)
    assert run.counts == {"frag_inconsistent": 4}
    # the poisoned datagram's expiry is not counted again as a time-out
    assert run.frag.counters() == counters(reassembled=1, poisoned=1)


def test_unfragmentable_part_too_long(tmp_path: Path) -> None:
    """An IPv6 fragment whose headers before the fragment header do not fit is dropped
    on its own: the receiver may rebuild the datagram from the others, so they are
    still reassembled (and inspected)."""
    d = v6_udp()
    long_hop_by_hop = b"\x2c\x3f" + bytes(510)  # 512 bytes: 552 before the fragment header
    second = IPv6(d.fragments[1])[IPv6ExtHdrFragment]
    too_long = bytes(IPv6(src=C6, dst=S6, nh=0) / Raw(long_hop_by_hop + bytes(second)))
    frags = [too_long, d.fragments[0], too_long, *d.fragments[1:]]
    run = run_stages(tmp_path, [wrap(f) for f in frags])
    assert reasons(run) == ["frag_header_too_long", "ok", "frag_header_too_long"] + ["ok"] * (len(frags) - 3)
    assert completing(run) == [len(frags) - 1]
    assert_is_datagram(run.rows[-1], d)
    assert run.counts == {"frag_header_too_long": 2}
    assert run.frag.counters() == counters(reassembled=1)


# --- the policy setting ------------------------------------------------------------------------

def mixed_capture() -> tuple[list[bytes], list[bool]]:
    """Fragments of two datagrams among whole packets (an IPv6 atomic fragment is whole,
    RFC 6946); the flag says which are fragments."""
    whole = [bytes(IP(src=C4, dst=S4) / UDP(sport=1, dport=2) / Raw(b"whole")),
             bytes(IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(nh=17, id=1) / UDP(sport=1, dport=2))]
    packets = [(f, True) for f in v4_tcp().fragments + v6_udp().fragments] + [(p, False) for p in whole]
    random.Random(3).shuffle(packets)
    return [wrap(p) for p, _ in packets], [is_frag for _, is_frag in packets]


def test_pass_mode_forwards_fragments_uninspected(tmp_path: Path) -> None:
    frames, is_frag = mixed_capture()
    run = run_stages(tmp_path, frames, FragConfig(mode=FragMode.PASS))
    assert all(r["verdict"] == "PENDING" for r in run.rows) and completing(run) == []
    assert [bool(r["pflags"] & PF_FRAGMENT) for r in run.rows] == is_frag
    assert all(not c for c in run.frag.counters().values()) and run.counts == {}


def test_drop_mode_drops_every_fragment(tmp_path: Path) -> None:
    frames, is_frag = mixed_capture()
    run = run_stages(tmp_path, frames, FragConfig(mode=FragMode.DROP))
    assert [r["reason"] == "frag_policy_drop" for r in run.rows] == is_frag
    assert all(r["verdict"] == ("DROP" if f else "PENDING") for r, f in zip(run.rows, is_frag))
    assert run.counts == {"frag_policy_drop": sum(is_frag)}


# --- end to end ---------------------------------------------------------------------------------

def returned(frame: bytes) -> bytes:
    """A GWLB target's return of a plain (untagged) GWLB frame: MACs and outer IPv4
    addresses swapped; the checksums are sums, unchanged by a swap."""
    return frame[6:12] + frame[0:6] + frame[12:26] + frame[30:34] + frame[26:30] + frame[34:]


def test_replay_forwards_every_fragment(tmp_path: Path) -> None:
    frames, is_frag = mixed_capture()
    inp = write_pcap(tmp_path / "frags.pcap", frames)
    out, stats = tmp_path / "out.pcap", tmp_path / "stats.json"
    res = egressd("replay", inp, "--out", out, "--stats", stats, "--no-progress")
    assert res.returncode == 0, res.stderr
    with RawPcapReader(str(out)) as r:
        back = [data for data, _ in r]
    assert back == [returned(f) for f in frames]
    for f in back:
        assert dpkt.in_cksum(f[14:34]) == 0
    report = json.loads(stats.read_text())
    assert report["packets_dropped"] == 0 and report["packets_forwarded"] == len(frames)
    assert report["fragments"]["reassembled"] == 2 and report["fragments"]["overlaps"] == 0
    assert sum(is_frag) > 6


def test_client_hello_split_across_fragments(tmp_path: Path) -> None:
    """A name split across fragments is whole in the completing row."""
    name = b"secret.example.com"
    hello = client_hello(name.decode(), "frag-sni")
    d = v4_datagram(0x5151, TCP(sport=49152, dport=443, seq=7, ack=9, flags="PA"), hello, size=16,
                    first=24)  # the TCP header whole in the first fragment (RFC 1858)
    assert name in d.whole and not any(name in f for f in d.fragments)
    run = run_stages(tmp_path, [wrap(f) for f in reversed(d.fragments)])
    (i,) = completing(run)
    assert_is_datagram(run.rows[i], d)
    assert (run.rows[i]["tcp_seq"], run.rows[i]["tcp_ack"], run.rows[i]["tcp_flags"]) == (7, 9, 0x18)
    record = dpkt.ssl.TLSRecord(run.rows[i]["payload_bytes"])
    extensions = dict(dpkt.ssl.TLSHandshake(record.data).data.extensions)
    assert extensions[0][5:] == name  # server_name: list length, type, name length, name


# --- found while writing these tests (see the report) -------------------------------------------

def test_ipv6_headers_after_the_fragment_header(tmp_path: Path) -> None:
    """RFC 8200 4.5 keys a datagram by addresses and identification only.  With a
    destination options header after the fragment header, the first fragment's
    transport (UDP) and the others' next header (60) differ; the datagram must still
    be reassembled, or its fragments pass uninspected."""
    d = v6_datagram(0x6161, UDP(sport=5000, dport=6000), payload_of("dstopts/", 1000),
                    unfragmentable=(), fragmentable=(IPv6ExtHdrDestOpt(),))
    run = run_stages(tmp_path, [wrap(f) for f in d.fragments])
    assert len(completing(run)) == 1
    assert_is_datagram(run.rows[completing(run)[0]], d)


def test_ipv6_fragments_name_any_next_header(tmp_path: Path) -> None:
    """RFC 8200 4.5: only the first fragment's next header counts in reassembly."""
    d = v6_udp()
    frags = [d.fragments[0]]
    for f in d.fragments[1:]:
        ip = IPv6(f)
        ip[IPv6ExtHdrFragment].nh = 59
        frags.append(bytes(ip))
    run = run_stages(tmp_path, [wrap(f) for f in frags])
    assert completing(run) == [len(frags) - 1]
    assert_is_datagram(run.rows[-1], d)


def test_ipv4_datagrams_differ_by_protocol(tmp_path: Path) -> None:
    """RFC 791 keys a datagram by addresses, protocol and identification: the same
    identification under UDP and TCP at once is two datagrams, not overlaps."""
    udp = v4_datagram(0x7171, UDP(sport=5353, dport=53), payload_of("udp/", 900))
    tcp = v4_datagram(0x7171, TCP(sport=40001, dport=443, flags="PA"), payload_of("tcp/", 900))
    frags = [f for pair in zip(udp.fragments, tcp.fragments) for f in pair]
    assert len(frags) == 8
    run = run_stages(tmp_path, [wrap(f) for f in frags])
    assert completing(run) == [6, 7]
    assert_is_datagram(run.rows[6], udp)
    assert_is_datagram(run.rows[7], tcp)
    assert run.frag.counters() == counters(reassembled=2)


@pytest.mark.parametrize("bogus", ["misaligned", "past the end"])
def test_a_bad_fragment_does_not_unlock_the_datagram(tmp_path: Path, bogus: str) -> None:
    """A fragment dropped as malformed never reaches the receiver, which reassembles
    the datagram from the others; so the others must still be reassembled (and
    inspected) here, or dropped too."""
    d = v4_tcp()
    ident, end = IP(d.fragments[0]).id, len(d.whole) - 20
    if bogus == "misaligned":
        frags = [d.fragments[0], d.fragments[1], raw_fragment(4, ident, 8, True, bytes(12), proto=6),
                 *d.fragments[2:]]
    else:
        frags = [d.fragments[-1], raw_fragment(4, ident, end // 8 * 8 + 8, True, bytes(8), proto=6),
                 *d.fragments[:-1]]
    run = run_stages(tmp_path, [wrap(f) for f in frags])
    bad = 2 if bogus == "misaligned" else 1
    assert run.rows[bad]["verdict"] == "DROP"
    if all(r["verdict"] != "DROP" for i, r in enumerate(run.rows) if i != bad):
        assert len(completing(run)) == 1, "every fragment forwarded, the datagram never inspected"
    if bogus == "misaligned":  # parse drops it alone: the others make the datagram
        assert reasons(run) == ["ok", "ok", "frag_bad_offset"] + ["ok"] * (len(frags) - 3)
        assert_is_datagram(run.rows[-1], d)
    else:  # two ends: the datagram is poisoned
        assert reasons(run) == ["ok"] + ["frag_inconsistent"] * (len(frags) - 1)


@pytest.mark.parametrize("family", [4, 6])
def test_a_datagram_with_a_hole_is_not_complete(tmp_path: Path, family: int) -> None:
    """Blocks beyond the datagram's end must not stand in for a missing block; the
    end that contradicts them poisons the datagram, so the missing block, when it
    comes, does not complete it either."""
    run = run_stages(tmp_path, [wrap(f) for f in (
        pieces(family)[0],
        raw_fragment(family, 9, 24, True, bytes(8)),      # past the end that comes next
        pieces(family)[2],                                # [8, 16) has not come
        pieces(family)[1],
    )])
    assert reasons(run) == ["ok", "ok", "frag_inconsistent", "frag_inconsistent"]
    assert completing(run) == []


@pytest.mark.parametrize("family", [4, 6])
def test_an_identification_used_again_is_a_new_datagram(tmp_path: Path, family: int) -> None:
    """A receiver forgets a datagram once it has rebuilt it (Linux frees the queue
    before it reassembles): fragments that come later under the same identification
    make a new datagram there, so here they must make one that is inspected, or be
    dropped, whether or not a batch boundary falls between the two."""
    def datagram(label: str) -> Datagram:
        if family == 4:
            return v4_datagram(0x4242, UDP(sport=5353, dport=53), payload_of(label, 900))
        return v6_datagram(0x4242, UDP(sport=5353, dport=53), payload_of(label, 900))
    first, second = datagram("benign/"), datagram("second/")
    frames = [wrap(f) for f in first.fragments + second.fragments]
    for batch in (len(first.fragments), len(frames)):  # a boundary between them, none
        run = run_stages(tmp_path, frames, batch_packets=batch)
        later = run.rows[len(first.fragments):]
        assert run.rows[completing(run)[0]]["ip_bytes"] == first.whole
        inspected = [r for r in later if r["pflags"] & PF_REASSEMBLED and r["ip_bytes"] == second.whole]
        assert inspected or all(r["verdict"] == "DROP" for r in later), \
            f"batch of {batch}: the second datagram forwarded uninspected"
