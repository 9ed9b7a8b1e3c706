"""geneve.decap against its slow twin (reference_decap), on generated and real frames.

Hypothesis builds GWLB GENEVE frames the way GWLB sends them, then breaks them in
every way a length, flag or byte can be wrong; the numba kernel must name the same
drop reason as the reference and, for good packets, fill the same columns.  The
return path (geneve.encap) is checked against dpkt and an independent checksum.

EGRESSD_FUZZ_SCALE scales the example counts (test_boundscheck runs this module again
with fewer examples, every kernel recompiled with bounds checks).
"""
from __future__ import annotations

import collections
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.utils import RawPcapNgReader, RawPcapReader

from conftest import MALFORMED, SAMPLE
from egressd.engine.batch import PacketBatch
from egressd.engine.reasons import N_REASONS, NAMES, Verdict
from egressd.geneve.decap import decap
from egressd.geneve.encap import return_inplace
from reference_decap import (GWLB_CLASS, LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6,
                             LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW, VLAN_TPIDS,
                             reference_decap)

SCALE = float(os.environ.get("EGRESSD_FUZZ_SCALE", "1"))
PROTO_IPV4, PROTO_IPV6 = 0x0800, 0x86DD


def fuzz(examples: int) -> settings:
    """Deterministic settings (derandomized, no example database): CI sees the same
    examples on every run."""
    return settings(derandomize=True, database=None, deadline=None,
                    max_examples=max(10, int(examples * SCALE)),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Frame:
    """One captured frame as a capture record would describe it."""

    data: bytes
    link: int
    wirelen: int

    @property
    def caplen(self) -> int:
        return len(self.data)


@dataclass
class Layout:
    """Where the headers of a built frame start (offsets into the frame)."""

    ethertype: int | None  # the EtherType field, None for raw IP
    l3: int
    udp: int
    geneve: int
    options: list[int] = field(default_factory=list)  # each option's 4-byte header
    inner: int = 0
    inner_len: int = 0


# --- building well-formed GWLB frames -------------------------------------------------

def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum, written out independently of the engine and of dpkt."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# Strategies used on every example, built once (building them per draw is slow).
BYTE = st.integers(0, 255)
NIBBLE = st.integers(0, 15)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 2**32 - 1)
BYTES4 = st.binary(min_size=4, max_size=4)
BYTES8 = st.binary(min_size=8, max_size=8)


def words(max_words: int) -> st.SearchStrategy[bytes]:
    """Bytes in whole 4-byte words (IPv4 options, GENEVE option data)."""
    return st.integers(0, max_words).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))


IP_OPTIONS = words(10)
OTHER_OPTIONS = st.lists(st.tuples(U16, st.integers(0, 0x7F), words(31)).filter(
    lambda o: o[0] != GWLB_CLASS or o[1] not in (1, 2, 3)), max_size=3)


@st.composite
def link_headers(draw: st.DrawFn, max_tags: int) -> tuple[int, bytes, int | None]:
    """(linktype, header bytes ending with the EtherType 0x0800, EtherType position)."""
    link = draw(st.sampled_from([LINKTYPE_ETHERNET] * 5 + [LINKTYPE_RAW, LINKTYPE_IPV4,
                                                          LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2]))
    if link == LINKTYPE_ETHERNET:
        n_tags = draw(st.sampled_from([0, 0, 0] + list(range(1, max_tags + 1))))
        tag = st.tuples(st.sampled_from(VLAN_TPIDS), U16)
        tags = draw(st.lists(tag, min_size=n_tags, max_size=n_tags))
        head = draw(st.binary(min_size=12, max_size=12))
        head += b"".join(struct.pack(">HH", tpid, tci) for tpid, tci in tags)
        return link, head + b"\x08\x00", len(head)
    if link == LINKTYPE_LINUX_SLL:
        # packet type, ARPHRD_ETHER, address length, address (8), protocol
        head = struct.pack(">HHH8sH", draw(st.integers(0, 4)), 1, 6, draw(BYTES8),
                           0x0800)
        return link, head, 14
    if link == LINKTYPE_LINUX_SLL2:
        # protocol, reserved, interface index, ARPHRD_ETHER, packet type, address length, address
        head = struct.pack(">HHIHBB8s", 0x0800, 0, draw(st.integers(1, 99)), 1, draw(st.integers(0, 4)),
                           6, draw(BYTES8))
        return link, head, 0
    return link, b"", None


@st.composite
def gwlb_options(draw: st.DrawFn, edits: bool) -> list[tuple[int, int, bytes]]:
    """GWLB's three options plus 0-3 others, shuffled; with `edits`, sometimes one of
    GWLB's is missing or doubled."""
    options = [(GWLB_CLASS, 1, draw(BYTES8)),
               (GWLB_CLASS, 2, draw(BYTES8)),
               (GWLB_CLASS, 3, draw(BYTES4))]
    edit = draw(st.sampled_from(["keep"] * 4 + ["remove", "duplicate"])) if edits else "keep"
    if edit == "remove":
        del options[draw(st.integers(0, 2))]
    elif edit == "duplicate":
        cls, typ, value = options[draw(st.integers(0, 2))]
        options.append((cls, typ, draw(st.sampled_from([value, bytes(len(value))]))))
    # Other vendors' options, never critical here (mutations set that bit).
    options += draw(OTHER_OPTIONS)
    while sum(4 + len(v) for _, _, v in options) > 63 * 4:  # Opt Len is 6 bits of words
        options.pop()
    return draw(st.permutations(options))


@st.composite
def good_frames(draw: st.DrawFn, max_tags: int = 2, gwlb_edits: bool = False) -> tuple[Frame, Layout]:
    """A frame as GWLB delivers it: link / IPv4 / UDP 6081 / GENEVE + options / inner IP.

    Up to `max_tags` VLAN tags (the engine accepts two); `gwlb_edits` as in gwlb_options."""
    link, head, ethertype_at = draw(link_headers(max_tags))
    proto = draw(st.sampled_from([PROTO_IPV4, PROTO_IPV6]))
    inner = bytes([(4 if proto == PROTO_IPV4 else 6) << 4 | draw(NIBBLE)])
    inner += draw(st.binary(max_size=300))
    options = draw(gwlb_options(gwlb_edits))
    opt_bytes = b"".join(struct.pack(">HBB", c, t, len(v) // 4) + v for c, t, v in options)
    geneve = struct.pack(">BBHI", len(opt_bytes) // 4, draw(st.integers(0, 0x7F)), proto,
                         draw(U32)) + opt_bytes + inner
    udp = dpkt.udp.UDP(sport=draw(U16), dport=6081, ulen=8 + len(geneve), data=geneve)
    ip_opts = draw(IP_OPTIONS)
    ip = dpkt.ip.IP(tos=draw(BYTE), id=draw(U16), ttl=draw(st.integers(1, 255)),
                    p=dpkt.ip.IP_PROTO_UDP, src=draw(BYTES4),
                    dst=draw(BYTES4), opts=ip_opts, data=udp)
    ip.hl = 5 + len(ip_opts) // 4
    ip.df = draw(st.booleans())
    packet = bytearray(bytes(ip))  # sum == 0: dpkt fills the IPv4 and UDP checksums
    ihl = 20 + len(ip_opts)
    if draw(st.booleans()):
        packet[ihl + 6:ihl + 8] = b"\0\0"  # UDP over IPv4 may carry no checksum
    padding = draw(st.binary(max_size=8)) if link == LINKTYPE_ETHERNET else b""
    data = head + bytes(packet) + padding
    l3 = len(head)
    layout = Layout(ethertype_at, l3, l3 + ihl, l3 + ihl + 8)
    pos = layout.geneve + 8
    for _, _, value in options:
        layout.options.append(pos)
        pos += 4 + len(value)
    layout.inner, layout.inner_len = pos, len(inner)
    return Frame(data, link, len(data)), layout


# --- breaking them ----------------------------------------------------------------------

def put16(buf: bytearray, pos: int | None, value: int) -> None:
    if pos is not None and pos + 2 <= len(buf):
        buf[pos:pos + 2] = value.to_bytes(2, "big")


def put_bits(buf: bytearray, pos: int, mask: int, value: int) -> None:
    """Replace the bits `mask` of buf[pos] by those of `value`."""
    if pos < len(buf):
        buf[pos] = (buf[pos] & ~mask & 0xFF) | (value & mask)


@st.composite
def broken_frames(draw: st.DrawFn) -> Frame:
    """A good frame with 0-3 fields or bytes made wrong, possibly cut short."""
    frame, at = draw(good_frames(max_tags=3, gwlb_edits=True))
    buf = bytearray(frame.data)
    kinds = draw(st.lists(st.sampled_from([
        "ethertype", "ip_version", "ihl", "total_length", "ip_fragment", "ip_protocol",
        "ip_checksum", "udp_length", "udp_port", "geneve_version", "geneve_flags", "opt_len",
        "geneve_protocol", "option_length", "option_critical", "option_id", "inner_version",
        "cut_inner", "flip", "truncate"]), max_size=3))
    fix_checksum = draw(st.booleans()) and "ip_checksum" not in kinds
    for kind in kinds:
        if kind == "ethertype":
            put16(buf, at.ethertype,
                  draw(st.sampled_from([0x86DD, 0x0806, 0x8100, 0x88A8, 0x9100, 0x05DC]) | U16))
        elif kind == "ip_version":
            put_bits(buf, at.l3, 0xF0, draw(NIBBLE) << 4)
        elif kind == "ihl":
            put_bits(buf, at.l3, 0x0F, draw(NIBBLE))
        elif kind == "total_length":
            total = at.inner + at.inner_len - at.l3
            put16(buf, at.l3 + 2, draw(st.integers(-30, 30).map(lambda d: max(0, total + d))
                                       | st.integers(at.udp - at.l3, at.udp - at.l3 + 16) | U16))
        elif kind == "ip_fragment":
            put16(buf, at.l3 + 6, draw(st.sampled_from([0x2000, 0x0001, 0x1FFF, 0x8000, 0x4000]) | U16))
        elif kind == "ip_protocol":
            put_bits(buf, at.l3 + 9, 0xFF, draw(st.sampled_from([6, 1, 47, 0]) | BYTE))
        elif kind == "ip_checksum":
            put16(buf, at.l3 + 10, draw(U16))
        elif kind == "udp_length":
            ulen = at.inner + at.inner_len - at.udp
            put16(buf, at.udp + 4, draw(st.integers(-12, 12).map(lambda d: max(0, ulen + d))
                                        | st.integers(0, 16) | U16))
        elif kind == "udp_port":
            put16(buf, at.udp + 2, draw(st.sampled_from([4789, 6080, 6082, 0]) | U16))
        elif kind == "geneve_version":
            put_bits(buf, at.geneve, 0xC0, draw(st.integers(1, 3)) << 6)
        elif kind == "geneve_flags":
            put_bits(buf, at.geneve + 1, 0xFF, draw(BYTE))
        elif kind == "opt_len":
            put_bits(buf, at.geneve, 0x3F, draw(st.integers(0, 63)))
        elif kind == "geneve_protocol":
            put16(buf, at.geneve + 2, draw(st.sampled_from([0x6558, 0x0806, 0x86DD, 0x0800]) | U16))
        elif kind in ("option_length", "option_critical", "option_id") and at.options:
            opt = draw(st.sampled_from(at.options))
            if kind == "option_length":
                put_bits(buf, opt + 3, 0xFF, draw(BYTE))
            elif kind == "option_critical":
                put_bits(buf, opt + 2, 0x80, 0x80)
            else:  # make it look like (another) GWLB option
                put16(buf, opt, GWLB_CLASS)
                put_bits(buf, opt + 2, 0xFF, draw(st.integers(0, 4) | st.integers(0x80, 0x84)))
        elif kind == "cut_inner":  # UDP and IPv4 lengths agree on a shorter inner packet
            ulen = at.inner + draw(st.integers(0, at.inner_len)) - at.udp
            put16(buf, at.udp + 4, ulen)
            put16(buf, at.l3 + 2, at.udp - at.l3 + ulen)
        elif kind == "inner_version":
            put_bits(buf, at.inner, 0xF0, draw(NIBBLE) << 4)
        elif kind == "flip" and buf:
            pos = draw(st.integers(0, len(buf) - 1))
            buf[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del buf[draw(st.integers(0, len(buf))):]
    if fix_checksum and at.l3 + 20 <= len(buf):
        ihl = max(20, (buf[at.l3] & 0x0F) * 4)
        if at.l3 + ihl <= len(buf):
            put16(buf, at.l3 + 10, 0)
            put16(buf, at.l3 + 10, internet_checksum(bytes(buf[at.l3:at.l3 + ihl])))
    # The record's wire length: as captured, longer (snaplen cut), or lying short.
    wirelen = draw(st.sampled_from([len(buf), frame.wirelen]) | st.integers(0, len(buf) + 64))
    return Frame(bytes(buf), frame.link, wirelen)


@st.composite
def random_frames(draw: st.DrawFn) -> Frame:
    """Bytes that were never a packet, under any link type (some the engine lacks)."""
    data = draw(st.binary(max_size=200))
    link = draw(st.sampled_from([LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6,
                                 LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, 0, 105, 127]))
    return Frame(data, link, draw(st.sampled_from([len(data)]) | st.integers(0, 300)))


any_frames = st.one_of(broken_frames(), good_frames().map(lambda fl: fl[0]), random_frames())


# --- running the kernel -----------------------------------------------------------------

def run_decap(frames: list[Frame], require_gwlb: bool, gaps: list[bytes] | None = None
              ) -> tuple[PacketBatch, np.ndarray]:
    """decap over one batch holding `frames` (with `gaps[i]` bytes before frame i).

    The buffer ends exactly where the last frame does, so that with NUMBA_BOUNDSCHECK
    a read past it raises.
    """
    gaps = gaps or [b""] * len(frames)
    buf = bytearray()
    offsets = []
    for gap, f in zip(gaps, frames):
        buf += gap
        offsets.append(len(buf))
        buf += f.data
    b = PacketBatch(len(frames), np.frombuffer(buf, dtype=np.uint8))
    b.reset(len(frames))
    b.off[:] = offsets
    b.caplen[:] = [f.caplen for f in frames]
    b.wirelen[:] = [f.wirelen for f in frames]
    b.link[:] = [f.link for f in frames]
    counts = np.zeros(N_REASONS, np.uint64)
    decap(b, counts, require_gwlb)
    return b, counts


def assert_agrees(b: PacketBatch, i: int, f: Frame, require_gwlb: bool) -> str:
    """The kernel's row i says what the reference says of frame f; returns the reason."""
    want = reference_decap(f.data, f.link, f.caplen, f.wirelen, require_gwlb)
    row = b.view(i)
    where = (f"frame {f.data.hex()} link={f.link} caplen={f.caplen} wirelen={f.wirelen} "
             f"require_gwlb={require_gwlb}")
    assert row["reason"] == want.reason, where
    if want.reason == "ok":
        assert {k: row[k] for k in want.fields} == want.fields, where
        assert row["verdict"] == "PENDING", where
    else:
        assert row["verdict"] == "DROP", where
    return want.reason


# --- the differential tests ---------------------------------------------------------------

@fuzz(2000)
@given(frame=broken_frames(), require_gwlb=st.booleans())
def test_broken_frames_match_reference(frame: Frame, require_gwlb: bool) -> None:
    b, counts = run_decap([frame], require_gwlb)
    reason = assert_agrees(b, 0, frame, require_gwlb)
    assert counts.sum() == 1 and counts[b.reason[0]] == 1, reason


@fuzz(500)
@given(frame_layout=good_frames(), require_gwlb=st.booleans())
def test_good_frames_decode(frame_layout: tuple[Frame, Layout], require_gwlb: bool) -> None:
    frame, at = frame_layout
    b, _ = run_decap([frame], require_gwlb)
    assert assert_agrees(b, 0, frame, require_gwlb) == "ok"
    # The builder knows where it put things.
    row = b.view(0)
    assert (row["l3"], row["geneve"], row["inner"]) == (at.l3, at.geneve, at.inner)
    assert row["inner_len"] == at.inner_len


@fuzz(600)
@given(frame=random_frames(), require_gwlb=st.booleans())
def test_random_bytes_match_reference(frame: Frame, require_gwlb: bool) -> None:
    b, _ = run_decap([frame], require_gwlb)
    assert_agrees(b, 0, frame, require_gwlb)


@fuzz(150)
@given(frames=st.lists(any_frames, min_size=1, max_size=64), data=st.data(),
       require_gwlb=st.booleans())
def test_batches_match_reference(frames: list[Frame], data: st.DataObject, require_gwlb: bool) -> None:
    gaps = data.draw(st.lists(st.binary(max_size=3), min_size=len(frames), max_size=len(frames)))
    b, counts = run_decap(frames, require_gwlb, gaps)
    seen = collections.Counter(assert_agrees(b, i, f, require_gwlb) for i, f in enumerate(frames))
    assert {NAMES[r]: int(c) for r, c in enumerate(counts) if c} == dict(seen)


def test_real_captures_match_reference(corpus: Path) -> None:
    """Every frame of the shared corpus and of pcaps/, read by scapy, not by egressd."""
    files = sorted(p for p in corpus.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    files += [SAMPLE, MALFORMED]
    gwlb_reasons: dict[str, collections.Counter[str]] = {}
    for path in files:
        reader = RawPcapNgReader if path.suffix == ".pcapng" else RawPcapReader
        frames = []
        with reader(str(path)) as r:
            for data, meta in r:
                link = meta.linktype if path.suffix == ".pcapng" else r.linktype
                frames.append(Frame(data, link, meta.wirelen))
        for require_gwlb in (False, True):
            b, _ = run_decap(frames, require_gwlb)
            reasons = collections.Counter(assert_agrees(b, i, f, require_gwlb)
                                          for i, f in enumerate(frames))
        gwlb_reasons[str(path.relative_to(path.parent.parent))] = reasons
    assert len(files) > 40
    # Real GWLB traffic decodes; GENEVE from other tunnels never passes as GWLB's.
    assert set(gwlb_reasons["bug-6402-01/input.pcap"]) == {"ok"}
    assert not any(gwlb_reasons[name]["ok"] for name in gwlb_reasons if name.startswith("geneve-misc"))
    assert gwlb_reasons["pcaps/sample-gwlb.pcap"]["ok"] > 50


def test_reference_matches_malformed_manifest() -> None:
    """The reference itself against the hand-written expectations of pcaps/malformed-gwlb."""
    manifest = json.loads(MALFORMED.with_suffix(".json").read_text())
    with RawPcapReader(str(MALFORMED)) as r:
        got = [reference_decap(data, r.linktype, len(data), meta.wirelen).reason for data, meta in r]
    assert [e["expect"] for e in manifest] == [got[e["index"]] for e in manifest]


# --- outer IPv4 checksum ------------------------------------------------------------------

@fuzz(400)
@given(frame_layout=good_frames(), checksum=U16)
def test_only_the_ip_checksum_wrong(frame_layout: tuple[Frame, Layout], checksum: int) -> None:
    frame, at = frame_layout
    buf = bytearray(frame.data)
    ihl = (buf[at.l3] & 0x0F) * 4
    put16(buf, at.l3 + 10, checksum)
    header = bytes(buf[at.l3:at.l3 + ihl])
    f = Frame(bytes(buf), frame.link, frame.wirelen)
    b, _ = run_decap([f], require_gwlb=False)
    # RFC 1071: a header is good when it sums to -0 (dpkt's in_cksum of it is then 0).
    assert (b.view(0)["reason"] == "outer_ip_bad_checksum") == (dpkt.in_cksum(header) != 0)
    assert_agrees(b, 0, f, require_gwlb=False)


@fuzz(50)
@given(frame_layout=good_frames())
def test_ip_checksum_negative_zero_accepted(frame_layout: tuple[Frame, Layout]) -> None:
    """A header whose other words sum to 0xFFFF has two good checksums, 0x0000 and 0xFFFF
    (RFC 1624 section 3): the receiver must accept both."""
    frame, at = frame_layout
    buf = bytearray(frame.data)
    ihl = (buf[at.l3] & 0x0F) * 4
    put16(buf, at.l3 + 4, 0)
    put16(buf, at.l3 + 10, 0)
    # The id that completes the sum to 0xFFFF is the checksum of the header without it.
    put16(buf, at.l3 + 4, internet_checksum(bytes(buf[at.l3:at.l3 + ihl])))
    for checksum in (0x0000, 0xFFFF):
        put16(buf, at.l3 + 10, checksum)
        f = Frame(bytes(buf), frame.link, frame.wirelen)
        b, _ = run_decap([f], require_gwlb=False)
        assert b.view(0)["reason"] == "ok", (checksum, f.data.hex())


# --- return path --------------------------------------------------------------------------

@fuzz(300)
@given(frame_layout=good_frames())
def test_return_path_swaps_addresses_and_keeps_checksums(frame_layout: tuple[Frame, Layout]) -> None:
    frame, at = frame_layout
    b, _ = run_decap([frame, frame], require_gwlb=True)
    assert list(b.reason[:2]) == [0, 0]
    b.verdict[:2] = [Verdict.PASS, Verdict.DROP]
    return_inplace(b)
    old, new = frame.data, b.frame(0)
    assert b.frame(1) == old, "only PASS packets are rewritten"

    if frame.link == LINKTYPE_ETHERNET:
        assert (new[:6], new[6:12]) == (old[6:12], old[:6])
        assert new[12:at.l3] == old[12:at.l3]
    else:
        assert new[:at.l3] == old[:at.l3]
    ip_in, ip_out = dpkt.ip.IP(old[at.l3:]), dpkt.ip.IP(new[at.l3:])
    assert (ip_out.src, ip_out.dst) == (ip_in.dst, ip_in.src)
    # Header checksum: what dpkt computes for the swapped header once its sum is cleared.
    recomputed = dpkt.ip.IP(new[at.l3:])
    recomputed.sum = 0
    assert dpkt.ip.IP(bytes(recomputed)).sum == ip_out.sum
    # Nothing else moved: header fields, IPv4 options, UDP ports, GENEVE, options, inner.
    assert new[at.l3:at.l3 + 10] == old[at.l3:at.l3 + 10]
    assert new[at.l3 + 20:] == old[at.l3 + 20:]
    # UDP checksum (RFC 768 pseudo-header), checked here without dpkt or the engine.
    ulen = struct.unpack_from(">H", new, at.udp + 4)[0]
    if new[at.udp + 6:at.udp + 8] != b"\0\0":  # zero: sent without a checksum
        for packet in (old, new):
            pseudo = packet[at.l3 + 12:at.l3 + 20] + struct.pack(">BBH", 0, 17, ulen)
            assert internet_checksum(pseudo + packet[at.udp:at.udp + ulen]) == 0
