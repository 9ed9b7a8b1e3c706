"""CaptureReader on hostile pcap and pcapng files.

Whatever the bytes, the reader either yields packets whose frames are bytes of the
file (inside what it read) or raises CaptureError: no other exception, no hang.
Well-formed generated files must read back exactly as built (the builder is the
model: record by record, timestamps from the pcapng interface options).

EGRESSD_FUZZ_SCALE scales the example counts (see test_boundscheck).
"""
from __future__ import annotations

import faulthandler
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressd.engine.pcapio import CaptureError, CaptureReader

SCALE = float(os.environ.get("EGRESSD_FUZZ_SCALE", "1"))
MAX_CAPLEN = 262144  # libpcap's ceiling for one record
MAX_BLOCK = 8 << 20  # the reader's bound on one pcapng block
HANG_S = 60          # a reader still busy after this long on a tiny file is hung


def fuzz(examples: int) -> settings:
    """Derandomized (same examples on every run) with a per-example deadline."""
    return settings(derandomize=True, database=None, deadline=timedelta(seconds=5),
                    max_examples=max(10, int(examples * SCALE)),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass(frozen=True)
class Packet:
    """What the reader should report for one record."""

    ts_ns: int | Fraction
    frame: bytes
    wirelen: int
    link: int


@dataclass
class Capture:
    """A generated file and, when it was built well-formed, the packets it holds."""

    data: bytes
    expected: list[Packet] | None


U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 2**32 - 1)
LIMITS = st.sampled_from([0, 1, 4, 12, 16, 28, 32, MAX_CAPLEN, MAX_CAPLEN + 1, MAX_BLOCK, MAX_BLOCK + 4,
                          2**31, 2**32 - 1])


def lies(true_value: int) -> st.SearchStrategy[int]:
    """A length field that is wrong: off by a little, zero, at the limits, or anything."""
    return LIMITS | st.integers(max(0, true_value - 8), true_value + 8) | U32


def pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


# --- pcap -----------------------------------------------------------------------------------

@st.composite
def pcap_files(draw: st.DrawFn, hostile: bool) -> Capture:
    e = draw(st.sampled_from("<>"))
    nsec = draw(st.booleans())
    link = draw(st.sampled_from([1, 101, 113, 228, 229, 276]))
    major = 2
    if hostile:
        link = draw(st.sampled_from([link] * 8 + [0, 105, 2**28 | 1]))
        major = draw(st.sampled_from([2] * 8 + [1, 3]))
    out = bytearray(struct.pack(e + "IHHiII", 0xA1B23C4D if nsec else 0xA1B2C3D4, major, 4, 0, 0,
                                draw(U32)) + struct.pack(e + "I", link))
    expected = []
    for _ in range(draw(st.integers(0, 8))):
        frame = draw(st.binary(max_size=120))
        sec = draw(U32)
        frac = draw(st.integers(0, 999_999_999 if nsec else 999_999))
        wirelen = draw(st.integers(len(frame), len(frame) + 1500))
        incl = draw(st.just(len(frame)) | lies(len(frame))) if hostile else len(frame)
        out += struct.pack(e + "IIII", sec, frac, incl, wirelen) + frame
        expected.append(Packet(sec * 10**9 + frac * (1 if nsec else 1000), frame, wirelen,
                               link & 0x0FFFFFFF))
    return Capture(bytes(out), None if hostile else expected)


# --- pcapng ---------------------------------------------------------------------------------

def block(e: str, btype: int, body: bytes, length: int | None = None,
          trailer: int | None = None) -> bytes:
    """A pcapng block; `length` / `trailer` replace the true total length if given."""
    body = pad4(body)
    true = 12 + len(body)
    return (struct.pack(e + "II", btype, true if length is None else length) + body
            + struct.pack(e + "I", true if trailer is None else trailer))


def option(e: str, code: int, value: bytes, olen: int | None = None) -> bytes:
    return struct.pack(e + "HH", code, len(value) if olen is None else olen) + pad4(value)


@dataclass
class Interface:
    link: int
    snaplen: int
    tsresol: int  # if_tsresol byte: 10^-k s, or 2^-k s with the high bit set
    tsoffset: int  # seconds


def timestamp(iface: Interface, raw: int) -> int | Fraction:
    """pcapng timestamp in ns: ticks of the interface's resolution plus its offset."""
    k = iface.tsresol & 0x7F
    if iface.tsresol & 0x80:
        ticks = Fraction(raw * 10**9, 2**k)
    elif k <= 9:
        ticks = raw * 10 ** (9 - k)
    else:
        ticks = raw // 10 ** (k - 9)  # finer than ns: the reader truncates
    return ticks + iface.tsoffset * 10**9


def raw_ticks(iface: Interface) -> st.SearchStrategy[int]:
    """Tick counts whose time in ns fits comfortably in an int64."""
    k = iface.tsresol & 0x7F
    if iface.tsresol & 0x80:
        top = (2**62 // 10**9) << k
    else:
        top = 2**62 // 10 ** max(0, 9 - k) if k <= 9 else 2**62
    return st.integers(0, min(top, 2**64 - 1))


@st.composite
def idb(draw: st.DrawFn, e: str, hostile: bool) -> tuple[bytes, Interface]:
    iface = Interface(link=draw(st.sampled_from([1, 101, 113, 228, 229, 276]) | U16),
                      snaplen=draw(st.sampled_from([0, 65535, MAX_CAPLEN]) | st.integers(1, 64)),
                      tsresol=6, tsoffset=0)
    opts = []
    if draw(st.booleans()):
        iface.tsresol = draw(st.integers(0, 18) | st.integers(0x80, 0x80 + 40))
        opts.append(option(e, 9, bytes([iface.tsresol])))
    if draw(st.booleans()):
        iface.tsoffset = draw(st.integers(-2**31, 2**31))
        opts.append(option(e, 14, struct.pack(e + "q", iface.tsoffset)))
    opts += [option(e, code, value) for code, value in draw(st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 2988]),
                  st.binary(max_size=12)), max_size=2))]
    opts = draw(st.permutations(opts))
    if hostile:
        # Options that lie: a length running past the block, resolutions out of range,
        # offsets no int64 of nanoseconds holds, a 9 or 14 of the wrong size.
        opts += draw(st.lists(st.one_of(
            st.builds(lambda v, n: option(e, 9, v, n), st.binary(max_size=3), U16),
            st.builds(lambda k: option(e, 9, bytes([k])), st.integers(0, 255)),
            st.builds(lambda s: option(e, 14, struct.pack(e + "q", s)),
                      st.integers(-2**63, 2**63 - 1)),
            st.builds(lambda v: option(e, 14, v), st.binary(max_size=12)),
            st.builds(lambda c, v, n: option(e, c, v, n), U16, st.binary(max_size=8),
                      U16)), max_size=3))
    if draw(st.booleans()) or opts:
        opts.append(option(e, 0, b""))  # opt_endofopt
    body = struct.pack(e + "HHI", iface.link, 0, iface.snaplen) + b"".join(opts)
    return body, iface


@st.composite
def pcapng_files(draw: st.DrawFn, hostile: bool) -> Capture:
    out = bytearray()
    expected: list[Packet] = []
    last_ts: int | Fraction = 0  # a Simple Packet Block has no time: the previous one's
    for _ in range(draw(st.integers(1, 2))):
        e = draw(st.sampled_from("<>"))
        major = draw(st.sampled_from([1] * 8 + [0, 2])) if hostile else 1
        shb_opts = draw(st.binary(max_size=16)) if hostile else b""
        out += block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, major, 0, -1) + shb_opts)
        interfaces: list[Interface] = []
        for kind in draw(st.lists(st.sampled_from(["idb", "epb", "epb", "spb", "pb", "other"]),
                                  max_size=10)):
            length = trailer = None
            if hostile and draw(st.integers(0, 4)) == 0:
                length = draw(lies(0)) if draw(st.booleans()) else None
                trailer = draw(lies(0)) if draw(st.booleans()) else None
            if kind == "idb" or (kind in ("epb", "spb", "pb") and not interfaces and not hostile):
                body, iface = draw(idb(e, hostile))
                out += block(e, 1, body, length, trailer)
                interfaces.append(iface)
                if kind == "idb":
                    continue
            if kind == "other":  # name resolution, statistics, custom, unknown: skipped
                out += block(e, draw(st.sampled_from([4, 5, 0xBAD, 0x40000BAD, 0x80000001])),
                             draw(st.binary(max_size=24)), length, trailer)
                continue
            frame = draw(st.binary(max_size=100))
            wirelen = draw(st.integers(len(frame), len(frame) + 1500))
            if kind == "spb":
                iface = interfaces[0] if interfaces else None
                orig = draw(st.just(len(frame)) | lies(len(frame))) if hostile else len(frame)
                out += block(e, 3, struct.pack(e + "I", orig) + frame, length, trailer)
                if iface is not None:
                    cap = min(len(frame), iface.snaplen) if iface.snaplen else len(frame)
                    expected.append(Packet(last_ts, frame[:cap], len(frame), iface.link))
                continue
            ifid = draw(st.integers(0, len(interfaces) - 1)) if interfaces else 0
            if hostile:
                ifid = draw(st.sampled_from([ifid] * 6 + [len(interfaces), 0xFFFF, 2**32 - 1]))
            iface = interfaces[ifid] if ifid < len(interfaces) else Interface(1, 0, 6, 0)
            raw = draw(raw_ticks(iface) if not hostile else st.integers(0, 2**64 - 1))
            caplen = draw(st.just(len(frame)) | lies(len(frame))) if hostile else len(frame)
            stamp = struct.pack(e + "II", raw >> 32, raw & 0xFFFFFFFF)
            lengths = struct.pack(e + "II", caplen, wirelen)
            if kind == "epb":
                body = struct.pack(e + "I", ifid & 0xFFFFFFFF) + stamp + lengths
                opts = draw(st.sampled_from([b"", option(e, 1, b"comment") + option(e, 0, b"")]))
                out += block(e, 6, body + pad4(frame) + opts, length, trailer)
            else:  # obsolete Packet Block: 16-bit interface id and a drops count
                body = struct.pack(e + "HH", ifid & 0xFFFF, draw(U16)) + stamp + lengths
                out += block(e, 2, body + frame, length, trailer)
            last_ts = timestamp(iface, raw)
            expected.append(Packet(last_ts, frame, wirelen, iface.link))
    return Capture(bytes(out), None if hostile else expected)


@st.composite
def damaged(draw: st.DrawFn, files: st.SearchStrategy[Capture]) -> Capture:
    """A file cut short and/or with bytes changed anywhere (mostly past the file header,
    where there is more to get wrong)."""
    data = bytearray(draw(files).data)
    first = draw(st.sampled_from([0, 28, 28, 28]))
    for _ in range(draw(st.integers(0, 4))):
        if len(data) > first:
            data[draw(st.integers(first, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))):]
    return Capture(bytes(data), None)


hostile_files = st.one_of(pcap_files(hostile=True), pcapng_files(hostile=True),
                          damaged(pcap_files(hostile=False) | pcapng_files(hostile=False)),
                          damaged(pcap_files(hostile=True) | pcapng_files(hostile=True)),
                          st.tuples(st.sampled_from([b"", b"\xd4\xc3\xb2\xa1", b"\x0a\x0d\x0d\x0a",
                                                     b"\xa1\xb2\x3c\x4d\x00\x02\x00\x04"]),
                                    st.binary(max_size=64)).map(lambda t: Capture(t[0] + t[1], None)))


# --- reading ------------------------------------------------------------------------------------

@contextmanager
def hang_guard() -> Iterator[None]:
    """Kill the whole run, with every thread's stack, if one example never ends: a
    numba kernel in an endless loop cannot be interrupted any other way."""
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def read_all(path: Path, data: bytes, batch_packets: int) -> list[Packet]:
    """Every packet the reader yields, each checked to be bytes of the file."""
    got = []
    with hang_guard(), CaptureReader(path, batch_packets=batch_packets) as reader:
        for b in reader:
            assert 0 < b.n <= batch_packets
            for i in range(b.n):
                start = reader.bytes_consumed + int(b.off[i])
                caplen = int(b.caplen[i])
                assert 0 <= start and start + caplen <= len(data), (start, caplen, len(data))
                frame = b.frame(i)
                assert frame == data[start:start + caplen]
                got.append(Packet(int(b.ts_ns[i]), frame, int(b.wirelen[i]), int(b.link[i])))
    return got


@pytest.fixture(scope="module")
def capture_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file rewritten by every example; reading it once first compiles the scanners
    (or loads them from numba's cache) outside the per-example deadline."""
    path = tmp_path_factory.mktemp("fuzz") / "capture"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
                     + struct.pack("<IIII", 0, 0, 1, 1) + b"\0")
    read_all(path, path.read_bytes(), 1)
    shb = block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb_ = block("<", 1, struct.pack("<HHI", 1, 0, 0))
    epb = block("<", 6, struct.pack("<IIIII", 0, 0, 0, 1, 1) + b"\0")
    spb = block("<", 3, struct.pack("<I", 1) + b"\0")
    path.write_bytes(shb + idb_ + epb + spb)
    read_all(path, path.read_bytes(), 1)
    return path


def same_time(got: int, want: int | Fraction) -> bool:
    """Exact, except binary resolutions, which the reader converts through a double."""
    return got == want if isinstance(want, int) else abs(got - want) <= 1 + abs(want) / 2**50


@fuzz(600)
@given(capture=pcap_files(hostile=False) | pcapng_files(hostile=False), batch=st.integers(1, 5))
def test_well_formed_files_read_exactly(capture_path: Path, capture: Capture, batch: int) -> None:
    capture_path.write_bytes(capture.data)
    got = read_all(capture_path, capture.data, batch)
    want = capture.expected
    assert [(p.frame, p.wirelen, p.link) for p in got] == [(p.frame, p.wirelen, p.link) for p in want]
    assert all(same_time(g.ts_ns, w.ts_ns) for g, w in zip(got, want)), (
        [g.ts_ns for g in got], [w.ts_ns for w in want])


@fuzz(1500)
@given(capture=hostile_files, batch=st.integers(1, 5))
def test_hostile_files_yield_frames_or_capture_error(capture_path: Path, capture: Capture,
                                                     batch: int) -> None:
    capture_path.write_bytes(capture.data)
    try:
        read_all(capture_path, capture.data, batch)
    except CaptureError as e:
        assert str(e).startswith(str(capture_path)) and "\n" not in str(e)


def test_huge_if_tsoffset_does_not_crash_the_reader(capture_path: Path) -> None:
    """An if_tsoffset (int64 seconds) past what int64 nanoseconds hold (~292 years) is a
    corrupt interface block like any other, not an OverflowError out of the reader."""
    shb = block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb_ = block("<", 1, struct.pack("<HHI", 1, 0, 0) + option("<", 14, struct.pack("<q", 2**62))
                 + option("<", 0, b""))
    epb = block("<", 6, struct.pack("<IIIII", 0, 0, 0, 4, 4) + b"\0" * 4)
    capture_path.write_bytes(shb + idb_ + epb)
    try:
        read_all(capture_path, capture_path.read_bytes(), 8)
    except CaptureError:
        pass
