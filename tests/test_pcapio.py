"""CaptureReader and PcapWriter against independent readers (dpkt, scapy, tshark) and
against files built byte by byte, including corrupt and hostile ones."""
from __future__ import annotations

import struct
import subprocess
import tracemalloc
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6

from conftest import SAMPLE
from egressd.engine.pcapio import MAX_BLOCK, CaptureError, CaptureReader, PcapWriter
from egressd.engine.reasons import N_REASONS, Verdict
from egressd.geneve.decap import decap
from helpers_pcap import (GWLB_CAPTURE, Record, dpkt_records, pcap_bytes, scapy_records,
                          tshark_fields, write_pcap)

T0 = 1_700_000_000  # seconds since the epoch of the hand-built timestamps


def epoch_ns(text: str) -> int:
    """tshark's frame.time_epoch ("1700000000.000000123") as integer nanoseconds."""
    return int(Decimal(text) * 10**9)


def corpus_records() -> list[Record]:
    """The real GWLB capture's packets, with sub-microsecond timestamps and one record
    cut short by a snap length, so every header field is exercised."""
    recs = dpkt_records(GWLB_CAPTURE)
    out = [Record(r.ts_ns + 7 * i + 1, r.frame, len(r.frame)) for i, r in enumerate(recs)]
    out[3] = Record(out[3].ts_ns, out[3].frame[:60], len(out[3].frame))
    return out


class Read(NamedTuple):
    """Everything a CaptureReader delivered before it finished or stopped."""

    packets: list[tuple[Record, int]]  # (packet, link type)
    error: CaptureError | None
    format: str | None
    linktypes: list[int]
    skipped: dict[str, int]


def read_all(path: Path, **kw) -> Read:
    got: list[tuple[Record, int]] = []
    try:
        with CaptureReader(path, **kw) as reader:
            for b in reader:
                got += [(Record(int(b.ts_ns[i]), b.frame(i), int(b.wirelen[i])), int(b.link[i]))
                        for i in range(b.n)]
    except CaptureError as e:
        assert "\n" not in str(e) and str(path) in str(e), "one line naming the file"
        return Read(got, e, None, [], {})
    return Read(got, None, reader.format, reader.linktypes, reader.records_skipped)


def assert_reads_as(path: Path, fmt: str, expected: list[Record]) -> None:
    """The engine reads `path` as an Ethernet capture of exactly these packets."""
    got = read_all(path)
    assert (got.error, got.format, got.linktypes, got.skipped) == (None, fmt, [1], {})
    assert [r.frame for r, _ in got.packets] == [r.frame for r in expected]
    assert [r.ts_ns for r, _ in got.packets] == [r.ts_ns for r in expected]
    assert [r.wirelen for r, _ in got.packets] == [r.wirelen for r in expected]
    assert {lk for _, lk in got.packets} == {1}


# -- pcap ---------------------------------------------------------------------------

@pytest.mark.parametrize("big", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nsec", [False, True], ids=["us", "ns"])
def test_pcap_magic_and_byte_order(tmp_path: Path, nsec: bool, big: bool, tshark: str) -> None:
    recs = corpus_records()
    if not nsec:
        recs = [r._replace(ts_ns=r.ts_ns // 1000 * 1000) for r in recs]
    path = write_pcap(tmp_path / "x.pcap", recs, nsec=nsec, big=big)

    assert_reads_as(path, "pcap", recs)
    # Independent readers of the same file agree with what was built.
    assert [(r.ts_ns, r.frame) for r in dpkt_records(path)] == [(r.ts_ns, r.frame) for r in recs]
    rows = tshark_fields(path, "frame.time_epoch", "frame.len", "frame.cap_len")
    assert [(epoch_ns(t), int(w), int(c)) for t, w, c in rows] == \
        [(r.ts_ns, r.wirelen, len(r.frame)) for r in recs]


# -- pcapng -------------------------------------------------------------------------

def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def ng_block(e: str, btype: int, body: bytes, trailer: int | None = None) -> bytes:
    n = 12 + len(_pad(body))
    trailer = n if trailer is None else trailer
    return struct.pack(e + "II", btype, n) + _pad(body) + struct.pack(e + "I", trailer)


def ng_shb(e: str) -> bytes:
    return ng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_idb(e: str, link: int, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += struct.pack(e + "HH", 9, 1) + _pad(bytes([tsresol]))
    if tsoffset is not None:
        opts += struct.pack(e + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(e + "HH", 0, 0)
    return ng_block(e, 1, struct.pack(e + "HHI", link, 0, 0) + opts)


def ng_epb(e: str, ifid: int, ticks: int, frame: bytes, wirelen: int | None = None) -> bytes:
    return ng_block(e, 6, struct.pack(e + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(frame),
                                      len(frame) if wirelen is None else wirelen) + frame)


def ng_spb(e: str, frame: bytes) -> bytes:
    return ng_block(e, 3, struct.pack(e + "I", len(frame)) + frame)


def ethertype(ip: bytes) -> int:
    return 0x0800 if ip[0] >> 4 == 4 else 0x86DD


def sll(ip: bytes) -> bytes:
    """Linux cooked header (LINKTYPE_LINUX_SLL) of a received packet."""
    return struct.pack(">HHH8sH", 0, 1, 6, b"\x02\x00\x0a\x00\x0a\x4a\0\0", ethertype(ip)) + ip


def sll2(ip: bytes) -> bytes:
    """Linux cooked v2 header (LINKTYPE_LINUX_SLL2)."""
    return struct.pack(">HHIHBB8s", ethertype(ip), 0, 1, 1, 0, 6, bytes(8)) + ip


@pytest.mark.parametrize("src", ["corpus-us", "built-ns"])
def test_pcapng_from_editcap(tmp_path: Path, src: str, tshark: str) -> None:
    if src == "corpus-us":
        pcap, recs = GWLB_CAPTURE, dpkt_records(GWLB_CAPTURE)
    else:
        recs = corpus_records()
        pcap = write_pcap(tmp_path / "in.pcap", recs, nsec=True)
    ng = tmp_path / "x.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(pcap), str(ng)], check=True, capture_output=True)
    info = subprocess.run(["capinfos", str(ng)], check=True, capture_output=True, text=True).stdout
    assert "pcapng" in info
    assert ("nanoseconds" in info) == (src == "built-ns")

    assert_reads_as(ng, "pcapng", recs)
    rows = tshark_fields(ng, "frame.time_epoch", "frame.len")
    assert [(epoch_ns(t), int(w)) for t, w in rows] == [(r.ts_ns, r.wirelen) for r in recs]
    # dpkt reads single-interface pcapng, with float timestamps: compare frames only.
    assert [r.frame for r in dpkt_records(ng)] == [r.frame for r in recs]


def test_pcapng_interfaces_sections_and_skipped_blocks(tmp_path: Path, tshark: str) -> None:
    """Two interfaces of different link types and resolutions, a Simple Packet Block,
    a block type no reader knows, then a big-endian second section whose interface 0
    is a new one (SLL)."""
    sample = dpkt_records(SAMPLE)
    eth, eth2 = sample[0].frame, sample[5].frame
    ip = sample[2].frame[14:]
    le, be = "<", ">"
    ts_eth = T0 * 10**9 + 123_456_789              # if_tsresol 9: nanosecond ticks
    ts_raw_ticks = T0 * 10**4 + 5678               # if_tsresol 4: 100 us ticks ...
    ts_raw = (T0 + 3600) * 10**9 + 567_800_000     # ... plus if_tsoffset 3600 s
    ts_sll = T0 * 10**6 + 42                       # no if_tsresol: microseconds
    data = (ng_shb(le) + ng_idb(le, 1, tsresol=9) + ng_idb(le, 101, tsresol=4, tsoffset=3600)
            + ng_epb(le, 0, ts_eth, eth, wirelen=len(eth) + 10)
            + ng_epb(le, 1, ts_raw_ticks, ip)
            + ng_block(le, 0x00000BAD, b"not a packet")
            + ng_spb(le, eth2)
            + ng_shb(be) + ng_idb(be, 113)
            + ng_epb(be, 0, ts_sll, sll(ip)))
    path = tmp_path / "hand.pcapng"
    path.write_bytes(data)

    got = read_all(path)
    assert (got.error, got.format, got.linktypes, got.skipped) == (None, "pcapng", [1, 101, 113], {})
    # A Simple Packet Block has no timestamp: it takes the previous packet's.
    assert got.packets == [(Record(ts_eth, eth, len(eth) + 10), 1),
                           (Record(ts_raw, ip, len(ip)), 101),
                           (Record(ts_raw, eth2, len(eth2)), 1),
                           (Record(ts_sll * 1000, sll(ip), len(ip) + 16), 113)]

    # tshark lists the unknown block as a record with no encapsulation; SPBs have no time.
    rows = [r for r in tshark_fields(path, "frame.time_epoch", "frame.len", "frame.encap_type") if r[2]]
    assert [(int(n), int(enc)) for _, n, enc in rows] == [(len(eth) + 10, 1), (len(ip), 7),
                                                         (len(eth2), 1), (len(ip) + 16, 25)]
    assert [epoch_ns(t) for t, _, _ in rows if t] == [ts_eth, ts_raw, ts_sll * 1000]


@pytest.mark.parametrize("tsresol,frac_ticks", [(0x80 | 20, 3 << 11), (0x80 | 32, 5 << 23)],
                         ids=["2^-20", "2^-32"])
def test_pcapng_binary_resolution_is_exact(tmp_path: Path, tsresol: int, frac_ticks: int,
                                           tshark: str) -> None:
    """Ticks of 2^-k s chosen to be a whole number of nanoseconds: the reader must
    give that number, as tshark does (a float of an epoch time in ns is not exact)."""
    k = tsresol & 0x7F
    ticks = (T0 << k) + frac_ticks
    frame = dpkt_records(SAMPLE)[0].frame
    path = tmp_path / "bin.pcapng"
    path.write_bytes(ng_shb("<") + ng_idb("<", 1, tsresol=tsresol) + ng_epb("<", 0, ticks, frame))
    exact = ticks * 10**9 >> k
    assert (ticks * 10**9) % (1 << k) == 0
    assert [epoch_ns(t) for (t,) in tshark_fields(path, "frame.time_epoch")] == [exact]
    assert [r.ts_ns for r, _ in read_all(path).packets] == [exact]


# -- streaming ----------------------------------------------------------------------

def test_stream_large_capture_in_bounded_memory(tmp_path: Path) -> None:
    """~20 MB (more than two buffer fills) read in small batches: every packet once,
    in order, from one buffer that never grows."""
    sample = dpkt_records(SAMPLE)
    period = pcap_bytes(sample, nsec=True)[24:]
    sizes = [len(r.frame) for r in sample]
    starts = np.cumsum([0] + [16 + s for s in sizes[:-1]])
    reps = 20_000_000 // len(period) + 1
    body = np.frombuffer(period * reps, dtype=np.uint8).copy()
    # Number every record through its timestamp (seconds = index) with numpy, so
    # order and uniqueness can be checked without per-packet Python on the write side.
    rec = (starts[None, :] + len(period) * np.arange(reps)[:, None]).ravel()
    n = len(rec)
    idx = np.arange(n, dtype="<u4").view(np.uint8).reshape(n, 4)
    body[rec[:, None] + np.arange(4)] = idx
    body[rec[:, None] + 4 + np.arange(4)] = 0
    path = tmp_path / "big.pcap"
    path.write_bytes(pcap_bytes([], nsec=True) + body.tobytes())

    chunk = MAX_BLOCK + 16  # the smallest buffer the reader accepts
    assert path.stat().st_size > 2 * chunk
    seen: list[np.ndarray] = []
    frames_ok = 0
    tracemalloc.start()
    try:
        with CaptureReader(path, batch_packets=1000, chunk_bytes=chunk) as reader:
            buf = reader.batch.buf
            base = tracemalloc.get_traced_memory()[0]
            for b in reader:
                assert b.buf is buf and len(b.buf) == chunk
                seen.append(b.ts_ns[:b.n].copy())
                # spot-check one frame per batch against the template it was copied from
                i = int(b.ts_ns[0] // 10**9)
                frames_ok += b.frame(0) == period[starts[i % len(sizes)] + 16:][:sizes[i % len(sizes)]]
            peak = tracemalloc.get_traced_memory()[1]
            assert reader.records_skipped == {}
    finally:
        tracemalloc.stop()
    ts = np.concatenate(seen)
    assert np.array_equal(ts, np.arange(n, dtype=np.int64) * 10**9)
    assert frames_ok == len(seen)
    assert len(dpkt_records(path)) == n
    # Only the per-batch copies made above: nothing proportional to the file.
    assert peak - base < 2 << 20


# -- writer -------------------------------------------------------------------------

def test_writer_roundtrip_selected_packets(tmp_path: Path, tshark: str) -> None:
    recs = corpus_records()
    src = write_pcap(tmp_path / "in.pcap", recs, nsec=True)
    out = tmp_path / "out.pcap"
    w = PcapWriter(out)
    with CaptureReader(src, batch_packets=5) as reader:
        for b in reader:
            b.verdict[:b.n] = Verdict.DROP
            b.verdict[:b.n:2] = Verdict.PASS  # every other packet of each batch
            w.write(b, Verdict.PASS)
    w.commit()
    kept = [r for i, r in enumerate(recs) if (i % 5) % 2 == 0]
    assert w.packets == len(kept)
    link, got = scapy_records(out)
    assert (link, got) == (1, kept)
    assert [(r.ts_ns, r.frame) for r in dpkt_records(out)] == [(r.ts_ns, r.frame) for r in kept]
    rows = tshark_fields(out, "frame.time_epoch", "frame.len", "frame.cap_len")
    assert [(epoch_ns(t), int(wire), int(cap)) for t, wire, cap in rows] == \
        [(r.ts_ns, r.wirelen, len(r.frame)) for r in kept]


def _ip_packets() -> list[bytes]:
    """Network-layer packets: the sample's untagged outer IPv4 packets, and one IPv6."""
    ip4 = [r.frame[14:] for r in dpkt_records(SAMPLE)[:6] if r.frame[12:14] == b"\x08\x00"]
    ip6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / b"v6")
    return ip4 + [ip6]


@pytest.mark.parametrize("link,wrap", [(101, bytes), (113, sll), (276, sll2)], ids=["raw", "sll", "sll2"])
def test_writer_synthesizes_ethernet(tmp_path: Path, link: int, wrap: Callable[[bytes], bytes],
                                     tshark: str) -> None:
    ips = _ip_packets()
    recs = [Record(T0 * 10**9 + i, wrap(ip), len(wrap(ip))) for i, ip in enumerate(ips)]
    src = write_pcap(tmp_path / "in.pcap", recs, nsec=True, linktype=link)
    out = tmp_path / "out.pcap"
    w = PcapWriter(out)
    with CaptureReader(src) as reader:
        for b in reader:
            decap(b, np.zeros(N_REASONS, np.uint64))  # finds the network header (l3)
            b.verdict[:b.n] = Verdict.PASS
            w.write(b, Verdict.PASS)
    w.commit()
    assert (w.packets, w.unwritable) == (len(ips), 0)
    expected = [Record(r.ts_ns, bytes(12) + struct.pack(">H", ethertype(ip)) + ip, len(ip) + 14)
                for r, ip in zip(recs, ips)]
    assert scapy_records(out) == (1, expected)
    rows = tshark_fields(out, "eth.type", "ip.src", "ipv6.src")
    assert rows[:-1] == [["0x0800", "10.0.10.74", ""]] * (len(ips) - 1)
    assert rows[-1] == ["0x86dd", "", "fd00::1"]


def test_writer_part_file_until_commit(tmp_path: Path) -> None:
    out = tmp_path / "out.pcap"
    part = tmp_path / "out.pcap.part"
    w = PcapWriter(out)
    assert part.exists() and not out.exists()
    w.commit()
    assert out.exists() and not part.exists()
    w = PcapWriter(tmp_path / "gone.pcap")
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pcap"]


# -- corrupt and hostile files ------------------------------------------------------

def test_oversized_record_names_its_offset(tmp_path: Path) -> None:
    recs = corpus_records()[:3]
    good = pcap_bytes(recs)
    path = tmp_path / "big-record.pcap"
    path.write_bytes(good + struct.pack("<IIII", T0, 0, 262145, 262145) + bytes(64))
    got = read_all(path)
    assert [r for r, _ in got.packets] == recs
    assert got.error is not None and f"at byte {len(good)}" in str(got.error)


@pytest.mark.parametrize("cut", [1, 15, 16, 40], ids=lambda c: f"{c}-bytes-of-last")
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_truncated_final_record_is_skipped(tmp_path: Path, fmt: str, cut: int) -> None:
    recs = corpus_records()[:4]
    if fmt == "pcap":
        data = pcap_bytes(recs)
        last = 16 + len(recs[-1].frame)
    else:
        blocks = [ng_epb("<", 0, r.ts_ns, r.frame, r.wirelen) for r in recs]
        data = ng_shb("<") + ng_idb("<", 1, tsresol=9) + b"".join(blocks)
        last = len(blocks[-1])
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(data[:len(data) - last + cut])
    got = read_all(path)
    assert got.error is None
    assert [r for r, _ in got.packets] == recs[:-1]
    assert got.skipped == {"truncated_final_record": 1}


def _ng_prefix() -> bytes:
    return ng_shb("<") + ng_idb("<", 1) + ng_epb("<", 0, 1, b"\x00" * 60)


@pytest.mark.parametrize("bad", [
    ng_block("<", 6, struct.pack("<IIIII", 0, 0, 0, 4, 4) + b"abcd", trailer=40),
    ng_epb("<", 5, 0, b"\x00" * 60),
    struct.pack("<II", 6, 34) + bytes(26),
    struct.pack("<II", 6, 0xFFFFFFF0) + bytes(64),
    ng_block("<", 6, struct.pack("<IIIII", 0, 0, 0, 400, 400) + bytes(8)),
], ids=["bad-trailing-length", "undeclared-interface", "length-not-multiple-of-4",
        "huge-block", "caplen-past-block"])
def test_corrupt_pcapng_block(tmp_path: Path, bad: bytes) -> None:
    prefix = _ng_prefix()
    path = tmp_path / "bad.pcapng"
    path.write_bytes(prefix + bad + ng_epb("<", 0, 2, b"\x00" * 60))
    got = read_all(path)
    assert len(got.packets) == 1
    assert got.error is not None and f"at byte {len(prefix)}" in str(got.error)


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "not a pcap or pcapng file"),
    (b"\xd4\xc3", "too short"),
    (struct.pack("<IHH", 0xA1B2C3D4, 2, 4), "header cut short"),
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 105), "unsupported link type 105"),
], ids=["empty", "text", "two-bytes", "short-header", "linktype-105"])
def test_unreadable_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "input.cap"
    path.write_bytes(content)
    got = read_all(path)
    assert got.packets == [] and got.error is not None and message in str(got.error)


def test_missing_file() -> None:
    with pytest.raises(CaptureError, match="cannot open"):
        CaptureReader("/nonexistent/capture.pcap")
