"""The l7 stage (engine.l7) on crafted traffic: what the tshark comparison does not reach.

test_names compares the names egressd attaches with tshark's on real captures, where
ClientHellos come in order and in one or two segments.  Here every case is built packet
by packet with scapy (TCP segments with explicit sequence numbers, in both directions),
wrapped the way GWLB sends them, and run through the Pipeline in small batches, so that
reassembly crosses batch boundaries: ClientHellos split, reordered, retransmitted and
overlapped; streams picked up mid-way; every reassembly limit; HTTP requests, CONNECT
tunnels, HelloRetryRequest, DNS answers, QUIC Initials from aioquic, flow slots reused
with a tiny flow table, and the names arena.  A hypothesis test then throws random
splits, orders and junk segments at a real ClientHello and compares the name with a
first-wins reassembly read by reference_tls.

EGRESSD_FUZZ_SCALE scales the example counts (fewer under NUMBA_BOUNDSCHECK=1).
"""
from __future__ import annotations

import ipaddress
import os
import random
import ssl
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

import reference_tls
from gwlb import wrap, write_pcap
from test_names import tshark_names

from egressd.bench.tls import ssl_client_hello
from egressd.engine.flows import FlowConfig
from egressd.engine.l7 import (APP_NAMES, L7_GAVE_UP, L7_MALFORMED, L7_MIDSTREAM, L7_OVERLAP,
                               L7_SNI_CHANGED, MAX_HOLES, MAX_SEGMENTS, MAX_STREAM, STALL_NS, L7Config,
                               NamesArena)
from egressd.engine.pcapio import CaptureReader
from egressd.engine.pipeline import Pipeline

SCALE = float(os.environ.get("EGRESSD_FUZZ_SCALE", "1"))
CLIENT, SERVER = "10.1.0.1", "198.51.100.7"
CLIENT6, SERVER6 = "2001:db8::1", "2001:db8:1::7"
ISN = 0xFFFF_FF00    # the client's sequence numbers wrap past 2**32 inside its first bytes
SERVER_ISN = 0x7000_0000
FLOWS = FlowConfig(capacity=4096)   # the default table (138 MB) is not needed here


@cache
def hello(name: str, tls12: bool = False) -> bytes:
    """A real ClientHello (Python's ssl, i.e. OpenSSL) naming `name`."""
    return ssl_client_hello(name, tls12=tls12)


@dataclass(frozen=True)
class Tcp:
    """The packets of one TCP connection; offsets count stream bytes from 0."""

    sport: int
    dport: int = 443
    client: str = CLIENT
    server: str = SERVER
    isn: int = ISN

    def _ip(self, to_server: bool):
        src, dst = (self.client, self.server) if to_server else (self.server, self.client)
        return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)

    def _seg(self, to_server: bool, seq: int, ack: int, flags: str, payload: bytes) -> bytes:
        ports = (self.sport, self.dport) if to_server else (self.dport, self.sport)
        tcp = TCP(sport=ports[0], dport=ports[1], seq=seq % 2**32, ack=ack % 2**32, flags=flags)
        return bytes(self._ip(to_server) / tcp / payload)

    def handshake(self) -> list[bytes]:
        return [self._seg(True, self.isn, 0, "S", b""),
                self._seg(False, SERVER_ISN, self.isn + 1, "SA", b""),
                self._seg(True, self.isn + 1, SERVER_ISN + 1, "A", b"")]

    def data(self, off: int, payload: bytes) -> bytes:
        """Client stream bytes at stream offset `off`."""
        return self._seg(True, self.isn + 1 + off, SERVER_ISN + 1, "PA", payload)

    def reply(self, off: int, payload: bytes) -> bytes:
        """Server stream bytes at offset `off` of the server's stream."""
        return self._seg(False, SERVER_ISN + 1 + off, self.isn + 1, "PA", payload)

    def rst(self, off: int) -> bytes:
        return self._seg(True, self.isn + 1 + off, 0, "R", b"")


def pieces(data: bytes, n: int) -> list[tuple[int, bytes]]:
    """data as n (offset, bytes) pieces of about equal size."""
    cuts = np.linspace(0, len(data), n + 1).astype(int)
    return [(int(a), data[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def completing(delivered: list[tuple[int, bytes]], length: int) -> int:
    """Index of the delivery after which stream bytes [0, length) are all in."""
    have = np.zeros(length, bool)
    for k, (off, data) in enumerate(delivered):
        have[off:off + len(data)] = True
        if have.all():
            return k
    raise AssertionError("the deliveries never cover the message")


def pipeline(l7: L7Config | None = None, flows: FlowConfig = FLOWS) -> Pipeline:
    return Pipeline(flows=flows, l7=l7)


@dataclass
class Run:
    """What the pipeline attached to every row (row numbers from 0 over the capture)."""

    pipe: Pipeline
    path: Path
    names: dict[int, str]
    apps: list[str]
    flags: list[int]
    slots: list[int]
    answers: list[tuple[int, str, ipaddress.IPv6Address, int]]

    def flow_flags(self, row: int) -> int:
        return int(self.pipe.l7.flags[self.slots[row]])

    def counters(self) -> dict[str, int]:
        return self.pipe.l7.counters()


def replay(packets: list[bytes], *, batch: int = 3, pipe: Pipeline | None = None,
           ts_ns: list[int] | None = None, path: Path | None = None) -> Run:
    """Inner IP packets, GWLB-wrapped, through the pipeline in batches of `batch`."""
    pipe = pipe or pipeline()
    stamps = ts_ns if ts_ns is not None else [i * 1_000_000 for i in range(len(packets))]
    with tempfile.TemporaryDirectory() as tmp:
        file = write_pcap(path or Path(tmp) / "l7.pcap", [wrap(p) for p in packets], stamps)
        run = Run(pipe, file, {}, [], [], [], [])
        with CaptureReader(file, batch_packets=batch, extra_bytes=pipe.extra_bytes) as reader:
            for b in reader:
                pipe.process(b, reader.extra_base)
                base = len(run.apps)
                for i in range(b.n):
                    if b.name_id[i] >= 0:
                        run.names[base + i] = pipe.l7.arena.get(int(b.name_id[i])).decode("latin-1")
                    run.apps.append(APP_NAMES[b.app[i]])
                    run.flags.append(int(b.l7_flags[i]))
                    run.slots.append(int(b.flow[i]))
                l7 = pipe.l7
                for k in range(l7.n_answers):
                    addr = ipaddress.IPv6Address(int(l7.ans_hi[k]) << 64 | int(l7.ans_lo[k]))
                    run.answers.append((base + int(l7.ans_row[k]), l7.arena.get(int(l7.ans_name[k])).decode(),
                                        addr, int(l7.ans_ttl[k])))
    assert len(run.apps) == len(packets)
    return run


# --- TLS ClientHello reassembly -------------------------------------------------------------

ORDERS = ("in_order", "reversed", "shuffled", "retransmitted")


def deliver(parts: list[tuple[int, bytes]], order: str, rng: random.Random) -> list[tuple[int, bytes]]:
    """The pieces in `order`; "retransmitted" adds duplicates of pieces already sent and
    neighbours resent as one segment (as a TCP stack repacketizes a retransmission)."""
    if order == "in_order":
        return list(parts)
    if order == "reversed":
        return parts[::-1]
    out = rng.sample(parts, len(parts))
    if order == "retransmitted":
        for k in rng.sample(range(len(parts)), (len(parts) + 1) // 2):
            out.insert(rng.randint(out.index(parts[k]) + 1, len(out)), parts[k])
        for k in rng.sample(range(len(parts) - 1), min(2, len(parts) - 1)):
            (a, x), (_, y) = parts[k], parts[k + 1]
            out.insert(rng.randint(0, len(out)), (a, x + y))
    return out


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
def test_split_client_hello(order: str, tls12: bool, tmp_path: Path) -> None:
    """The name appears once, on the row that brings the ClientHello's last missing byte."""
    rng = random.Random(f"{order}{tls12}")
    packets: list[bytes] = []
    expected: dict[int, str] = {}
    for n in (2, 3, 5, 8, 13):
        name = f"split{n}.{order}.Example.ORG"
        data = hello(name, tls12)
        assert len(data) > 150 and data[0] == 22
        c = Tcp(40000 + n, client=CLIENT6 if n == 5 else CLIENT, server=SERVER6 if n == 5 else SERVER)
        packets += c.handshake()
        sent = deliver(pieces(data, n), order, rng)
        expected[len(packets) + completing(sent, len(data))] = name.lower()
        packets += [c.data(off, d) for off, d in sent]
        # the server answers; the client resends everything late
        packets += [c.reply(0, b"\x16\x03\x03\x00\x04\x0e\x00\x00\x00"), c.data(0, data)]
    run = replay(packets, batch=3, path=tmp_path / "split.pcap")
    assert run.names == expected
    for row in expected:
        assert run.apps[row] == "tls"
        assert run.flow_flags(row) & (L7_GAVE_UP | L7_MALFORMED | L7_MIDSTREAM) == 0
    c = run.counters()
    assert (c["tls_names"], c["gave_up"], c["malformed"], c["pool_exhausted"]) == (5, 0, 0, 0)
    if order == "in_order":  # tshark reassembles in-order segments: it must agree, frame by frame
        assert {row + 1: name for row, name in run.names.items()} == tshark_names(run.path)


def test_whole_client_hello_in_one_segment(tmp_path: Path) -> None:
    """The common case, and tshark agrees; the sequence numbers wrap inside the stream."""
    packets = []
    for k, tls12 in enumerate((False, True)):
        c = Tcp(40100 + k)
        packets += c.handshake() + [c.data(0, hello(f"whole{k}.example.com.", tls12))]
    run = replay(packets, batch=2, path=tmp_path / "whole.pcap")
    assert run.names == {3: "whole0.example.com", 7: "whole1.example.com"}
    assert {row + 1: name for row, name in run.names.items()} == tshark_names(run.path)


def test_retransmission_is_not_an_overlap() -> None:
    """Resending the same bytes is ordinary TCP, not a rewrite: no overlap is flagged."""
    c = Tcp(40200)
    data = hello("resent.example")
    (a, x), (b, y) = pieces(data, 2)
    run = replay(c.handshake() + [c.data(a, x), c.data(a, x), c.data(b, y)], batch=2)
    assert run.names == {5: "resent.example"}
    assert run.counters()["overlaps"] == 0
    assert run.flow_flags(5) & L7_OVERLAP == 0


@pytest.mark.parametrize("early", ["head", "middle"])
def test_overlap_first_wins(early: str) -> None:
    """Two ClientHellos of identical layout disagree about the bytes of one stream: the
    bytes that came first are the stream, the rewrite is counted and flagged."""
    first, second = hello("first.example"), hello("other.example")
    at = first.index(b"first.example")
    assert len(first) == len(second) and second.index(b"other.example") == at
    # the first bytes hold the name of `first`; `second` then comes whole
    early_piece = (0, first[:at + 20]) if early == "head" else (at - 7, first[at - 7:at + 30])
    c = Tcp(40300)
    packets = c.handshake() + [c.data(*early_piece), c.data(0, second)]
    run = replay(packets, batch=2)
    assert run.names == {4: "first.example"}
    assert run.counters()["overlaps"] == 1
    assert run.flow_flags(4) & L7_OVERLAP
    assert run.flags[4] & L7_OVERLAP


@pytest.mark.parametrize("n", [1, 3])
def test_midstream_pickup(n: int) -> None:
    """No SYN seen: the stream starts at the first client byte seen."""
    c = Tcp(40400 + n)
    data = hello("midstream.example")
    run = replay([c.data(off, d) for off, d in pieces(data, n)], batch=2)
    assert run.names == {n - 1: "midstream.example"}
    assert run.flow_flags(n - 1) & L7_MIDSTREAM
    assert run.flags[n - 1] & L7_MIDSTREAM


# --- limits -----------------------------------------------------------------------------------

def test_segment_limit() -> None:
    """MAX_SEGMENTS segments may carry a ClientHello; one more and the search gives up,
    also when the segments are resends of the same piece."""
    packets = []
    data = hello("segments.example")
    a, b, d = Tcp(40500), Tcp(40501), Tcp(40502)
    packets += a.handshake() + [a.data(off, x) for off, x in pieces(data, MAX_SEGMENTS)]
    ok_row = len(packets) - 1
    packets += b.handshake() + [b.data(off, x) for off, x in pieces(data, MAX_SEGMENTS + 1)]
    give_up_b = len(packets) - 2
    (o1, x1), (o2, x2) = pieces(data, 2)
    packets += d.handshake() + [d.data(o1, x1)] * MAX_SEGMENTS + [d.data(o2, x2)]
    give_up_d = len(packets) - 2
    run = replay(packets, batch=5)
    assert run.names == {ok_row: "segments.example"}
    assert not run.flags[ok_row] & L7_GAVE_UP and not run.flow_flags(ok_row) & L7_GAVE_UP
    for row in (give_up_b, give_up_d):
        assert run.flags[row] & L7_GAVE_UP and run.flow_flags(row) & L7_GAVE_UP
        assert not run.flags[row - 1] & L7_GAVE_UP
    assert run.counters()["gave_up"] == 2


def test_hole_limit() -> None:
    """MAX_HOLES disjoint pieces are kept; one more and the search gives up."""
    data = hello("holes.example")
    a, b = Tcp(40600), Tcp(40601)
    parts = pieces(data, 2 * MAX_HOLES + 1)       # odd pieces: MAX_HOLES disjoint ones
    sent = parts[1::2] + parts[0::2]
    packets = a.handshake() + [a.data(*p) for p in sent]
    ok_row = len(packets) - 1
    parts = pieces(data, 2 * MAX_HOLES + 3)       # odd pieces: MAX_HOLES + 1 disjoint ones
    packets += b.handshake() + [b.data(*p) for p in parts[1::2] + parts[0::2]]
    give_up = len(packets) - len(parts) + MAX_HOLES
    run = replay(packets, batch=4)
    assert run.names == {ok_row: "holes.example"}
    assert run.flags[give_up] & L7_GAVE_UP and not run.flags[give_up - 1] & L7_GAVE_UP
    assert run.flow_flags(give_up) & L7_GAVE_UP
    assert run.counters()["gave_up"] == 1


def _first_halves(conns: list[Tcp], names: list[str]) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """Each connection's handshake and the first half of its ClientHello; the second halves."""
    packets, rest = [], []
    for c, name in zip(conns, names):
        (a, x), second = pieces(hello(name), 2)
        packets += c.handshake() + [c.data(a, x)]
        rest.append(second)
    return packets, rest


@pytest.mark.parametrize("reuse_first", [False, True], ids=["reclaim", "slot_reused_first"])
def test_buffer_pool(reuse_first: bool) -> None:
    """Two buffers, three split ClientHellos at once: the third gives up.  The buffers of
    flows that ended (their flow slot holds a new flow) go to a later flow."""
    a, b, c, d = (Tcp(40700 + k) for k in range(4))
    names = ["pool-a.example", "pool-b.example", "pool-c.example"]
    packets, rest = _first_halves([a, b, c], names)
    packets += [x.data(*r) for x, r in zip((a, b, c), rest)]
    pool_rows = len(packets)
    # a and b end (RST, then a new connection on the same ports takes the slot); d needs
    # a buffer: in the same batch before the new connections (reclaimed), or after them
    (h1, x1), (h2, x2) = pieces(hello("pool-d.example"), 2)
    ends = [a.rst(1000), b.rst(1000)]
    reborn = [Tcp(40700, isn=5).handshake()[0], Tcp(40701, isn=5).handshake()[0]]
    d_first = d.handshake() + [d.data(h1, x1)]
    tail = (ends + reborn + d_first) if reuse_first else (d_first[:3] + ends + d_first[3:] + reborn)
    packets += tail + [d.data(h2, x2)]
    # batches of pool_rows rows: the tail is one batch, whose flows the flow table has
    # already updated when the names stage looks for a buffer
    run = replay(packets, batch=pool_rows, pipe=pipeline(L7Config(buffers=2)))
    assert run.names == {pool_rows - 3: "pool-a.example", pool_rows - 2: "pool-b.example",
                         len(packets) - 1: "pool-d.example"}
    assert run.flow_flags(pool_rows - 1) & L7_GAVE_UP
    cnt = run.counters()
    assert (cnt["pool_exhausted"], cnt["gave_up"]) == (1, 1)


def test_whole_client_hello_takes_no_buffer() -> None:
    """A ClientHello whole in its segment is parsed in place and needs no buffer: with a
    pool of one, a later split ClientHello still gets it."""
    a, b = Tcp(40800), Tcp(40801)
    (h1, x1), (h2, x2) = pieces(hello("split.example"), 2)
    packets = a.handshake() + [a.data(0, hello("whole.example"))]
    packets += b.handshake() + [b.data(h1, x1), b.data(h2, x2)]
    run = replay(packets, batch=2, pipe=pipeline(L7Config(buffers=1)))
    assert run.names == {3: "whole.example", 8: "split.example"}
    assert run.counters()["pool_exhausted"] == 0


def test_reassembled_client_hello_gives_its_buffer_back() -> None:
    """A split ClientHello, once complete, returns its buffer although the flow still
    searches (for a second ClientHello): with a pool of one, the next live flow's split
    ClientHello gets it while the first flow is still open."""
    a, b = Tcp(40850), Tcp(40851)
    (h1, x1), (h2, x2) = pieces(hello("first.example"), 2)
    (k1, y1), (k2, y2) = pieces(hello("second.example"), 2)
    packets = a.handshake() + [a.data(h1, x1), a.data(h2, x2)]
    packets += b.handshake() + [b.data(k1, y1), b.data(k2, y2)]
    run = replay(packets, batch=2, pipe=pipeline(L7Config(buffers=1)))
    assert run.names == {4: "first.example", 9: "second.example"}
    assert (run.counters()["pool_exhausted"], run.counters()["reassembled"]) == (0, 2)


@pytest.mark.parametrize("stalled", [True, False])
def test_stalled_flow_loses_its_buffer(stalled: bool) -> None:
    """With the pool empty, a flow that sent nothing for STALL_NS gives its buffer up."""
    a, b = Tcp(40900), Tcp(40901)
    packets, (rest_a,) = _first_halves([a], ["stall-a.example"])
    (h1, x1), (h2, x2) = pieces(hello("stall-b.example"), 2)
    packets += b.handshake() + [b.data(h1, x1), b.data(h2, x2), a.data(*rest_a)]
    wait = STALL_NS + 1_000_000_000 if stalled else STALL_NS - 1_000_000_000
    ts = [k * 1000 for k in range(4)] + [wait + k * 1000 for k in range(6)]
    run = replay(packets, batch=2, pipe=pipeline(L7Config(buffers=1)), ts_ns=ts)
    if stalled:
        assert run.names == {8: "stall-b.example"}
        assert run.flow_flags(3) & L7_GAVE_UP and not run.flow_flags(8) & L7_GAVE_UP
        assert run.counters()["pool_exhausted"] == 0
    else:
        assert run.names == {9: "stall-a.example"}
        assert run.flow_flags(8) & L7_GAVE_UP and not run.flow_flags(9) & L7_GAVE_UP
        assert run.counters()["pool_exhausted"] == 1


# --- HTTP -------------------------------------------------------------------------------------

# (request, the name, whether tshark's Host is that name)
HTTP_REQUESTS = [
    (b"GET /index.html HTTP/1.1\r\nHost: WWW.Example.COM:8080\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
     "www.example.com", True),
    (b"GET http://Abs.Example:8080/x?y=1 HTTP/1.1\r\nHost: abs.example:8080\r\n\r\n", "abs.example", True),
    # absolute-form: the target's host is the one the request goes to (RFC 9112 3.2.2)
    (b"GET http://target.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n", "target.example", False),
    (b"POST /api HTTP/1.1\r\nhost: [2001:DB8::5]:8443\r\nContent-Length: 5\r\n\r\nhello",
     "2001:db8::5", True),
]


@pytest.mark.parametrize("n,order", [(1, "in_order"), (4, "in_order"), (4, "reversed"), (9, "shuffled")])
def test_http_request(n: int, order: str, tmp_path: Path) -> None:
    """The host of the first request, on the row that completes its header block."""
    rng = random.Random(n)
    packets: list[bytes] = []
    expected: dict[int, str] = {}
    tshark_rows = set()
    for k, (request, name, tshark_agrees) in enumerate(HTTP_REQUESTS):
        c = Tcp(41000 + k, dport=80)
        packets += c.handshake()
        sent = deliver(pieces(request, n), order, rng)
        row = len(packets) + completing(sent, request.index(b"\r\n\r\n") + 4)
        expected[row] = name
        if tshark_agrees:
            tshark_rows.add(row + 1)
        packets += [c.data(off, d) for off, d in sent]
        packets += [c.reply(0, b"HTTP/1.1 204 No Content\r\n\r\n"),
                    c.data(len(request), b"GET /second HTTP/1.1\r\nHost: second.example\r\n\r\n")]
    run = replay(packets, batch=3, path=tmp_path / "http.pcap")
    assert run.names == expected
    assert all(run.apps[row] == "http" for row in expected)
    assert run.counters()["http_names"] == len(HTTP_REQUESTS)
    if order == "in_order":
        seen = tshark_names(run.path)
        assert {f: name for f, name in seen.items() if f in tshark_rows} == \
            {row + 1: name for row, name in expected.items() if row + 1 in tshark_rows}


def test_connect_then_tunnelled_client_hello() -> None:
    """An explicit proxy: the CONNECT target on the CONNECT row, then the SNI of the
    ClientHello sent through the tunnel, on its own row."""
    c = Tcp(41100, dport=3128)
    connect = b"CONNECT Tunnel.Example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n"
    (a, x), (b, y) = pieces(hello("inner.example"), 2)
    base = len(connect)
    packets = c.handshake() + [c.data(0, connect[:11]), c.data(11, connect[11:]),
                               c.reply(0, b"HTTP/1.1 200 Connection established\r\n\r\n"),
                               c.data(base + b, y), c.data(base + a, x)]
    run = replay(packets, batch=2)
    assert run.names == {4: "tunnel.example", 7: "inner.example"}
    assert (run.apps[4], run.apps[7]) == ("http", "tls")
    cnt = run.counters()
    assert (cnt["http_names"], cnt["tls_names"]) == (1, 1)


# --- TLS 1.3 HelloRetryRequest, and what clients send after a ClientHello -------------------

HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
CCS = b"\x14\x03\x03\x00\x01\x01"


def record(content: int, body: bytes) -> bytes:
    return bytes([content, 3, 3]) + len(body).to_bytes(2, "big") + body


def hello_retry_request() -> bytes:
    """The server's HelloRetryRequest (a ServerHello with RFC 8446's special random,
    asking for a P-256 key share) and its ChangeCipherSpec."""
    ext = (b"\x00\x2b\x00\x02\x03\x04"     # supported_versions: TLS 1.3
           b"\x00\x33\x00\x02\x00\x17")    # key_share: secp256r1
    body = b"\x03\x03" + HRR_RANDOM + b"\x00" + b"\x13\x01" + b"\x00" + len(ext).to_bytes(2, "big") + ext
    return record(22, b"\x02" + len(body).to_bytes(3, "big") + body) + CCS


@pytest.mark.parametrize("second_name,split", [("hrr.example", False), ("elsewhere.example", True)])
def test_hello_retry_request(second_name: str, split: bool, tmp_path: Path) -> None:
    """Two ClientHellos on one connection, a ChangeCipherSpec before the second: each
    name on its ClientHello's row; a second name different from the first is flagged."""
    c = Tcp(41200)
    first, second = hello("hrr.example"), hello(second_name)
    packets = c.handshake() + [c.data(0, first), c.reply(0, hello_retry_request())]
    if split:  # the ChangeCipherSpec alone, then the second ClientHello in two, reversed
        (a, x), (b, y) = pieces(second, 2)
        at = len(first) + len(CCS)
        packets += [c.data(len(first), CCS), c.data(at + b, y), c.data(at + a, x)]
    else:
        packets += [c.data(len(first), CCS + second)]
    run = replay(packets, batch=2, path=tmp_path / "hrr.pcap")
    last = len(packets) - 1
    assert run.names == {3: "hrr.example", last: second_name}
    assert run.apps[last] == "tls"
    assert bool(run.flags[last] & L7_SNI_CHANGED) == split
    assert bool(run.flow_flags(last) & L7_SNI_CHANGED) == split
    assert run.counters()["tls_names"] == 2
    if not split:  # (tshark_names does not reassemble out-of-order segments)
        assert {row + 1: name for row, name in run.names.items()} == tshark_names(run.path)


@pytest.fixture(scope="module")
def server_context(tmp_path_factory) -> ssl.SSLContext:
    """A TLS server (Python's ssl) with a throw-away self-signed certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("cert")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return ctx


def tls_session(server: ssl.SSLContext, name: str, tls12: bool) -> list[tuple[bool, bytes]]:
    """A real handshake and one request, in memory: (from the client, bytes) per flight."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    bios = [ssl.MemoryBIO() for _ in range(4)]
    ends = [ctx.wrap_bio(bios[0], bios[1], server_hostname=name),
            server.wrap_bio(bios[2], bios[3], server_side=True)]
    flights: list[tuple[bool, bytes]] = []
    done = [False, False]
    for _ in range(8):
        for k in (0, 1):
            try:
                ends[k].do_handshake()
                done[k] = True
            except ssl.SSLWantReadError:
                pass
            out = bios[2 * k + 1].read()
            if out:
                flights.append((k == 0, out))
                bios[2 - 2 * k].write(out)
        if all(done):
            break
    ends[0].write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    flights.append((True, bios[1].read()))
    return flights


def connection(c: Tcp, flights: list[tuple[bool, bytes]]) -> list[bytes]:
    """The packets of a connection carrying these flights, one segment each."""
    packets = c.handshake()
    sent = {True: 0, False: 0}
    for client, data in flights:
        packets.append(c.data(sent[True], data) if client else c.reply(sent[False], data))
        sent[client] += len(data)
    return packets


@pytest.mark.parametrize("tls12", [True, False], ids=["tls12", "tls13"])
def test_client_flights_after_the_client_hello(server_context: ssl.SSLContext, tls12: bool) -> None:
    """A whole real connection: the ClientKeyExchange (TLS 1.2), ChangeCipherSpec and
    encrypted records after the ClientHello are not a second ClientHello: one name, no
    malformed count."""
    flights = tls_session(server_context, "real.example", tls12)
    assert flights[0][0] and len([f for f in flights if f[0]]) >= 3
    if tls12:  # the client's second flight starts with a handshake record (ClientKeyExchange)
        assert flights[2][1][:1] == b"\x16" and flights[2][1][5] == 16
    run = replay(connection(Tcp(41300), flights), batch=2)
    assert run.names == {3: "real.example"}
    assert not any(f & L7_MALFORMED for f in run.flags)
    c = run.counters()
    assert (c["tls_names"], c["malformed"], c["no_name"]) == (1, 0, 0)


def test_abbreviated_tls12_handshake() -> None:
    """A resumed TLS 1.2 session: the client answers the server's Finished with a
    ChangeCipherSpec and its own encrypted Finished, a handshake record.  With
    ChaCha20-Poly1305 (no explicit nonce) or a CBC suite (random IV) the record's first
    byte is uniformly random: one time in 256 it is 0x01, the ClientHello type.  It is
    still not a ClientHello, and the connection is not malformed."""
    finished = bytes([1]) + bytes(range(100, 131))   # 32 bytes of ciphertext
    server = record(22, b"\x02\x00\x00\x26" + bytes(38)) + CCS + record(22, bytes(32))
    flights = [(True, hello("resumed.example", tls12=True)), (False, server),
               (True, CCS + record(22, finished)), (True, record(23, bytes(40)))]
    run = replay(connection(Tcp(41400), flights), batch=2)
    assert run.names == {3: "resumed.example"}
    assert not any(f & L7_MALFORMED for f in run.flags)
    assert run.counters()["malformed"] == 0


# --- DNS --------------------------------------------------------------------------------------

def udp(payload: bytes, sport: int, dport: int, to_server: bool = True, v6: bool = False) -> bytes:
    """One UDP datagram between the client and the server."""
    src, dst = (CLIENT6, SERVER6) if v6 else (CLIENT, SERVER)
    if not to_server:
        src, dst = dst, src
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    return bytes(ip / UDP(sport=sport, dport=dport) / payload)


def dns_exchange(qname: str, answers: list[DNSRR], sport: int, v6: bool = False,
                 qtype: str = "A") -> list[bytes]:
    q = DNS(id=sport, rd=1, qd=DNSQR(qname=qname, qtype=qtype))
    r = DNS(id=sport, qr=1, rd=1, ra=1, qd=DNSQR(qname=qname, qtype=qtype), an=answers)
    return [udp(bytes(q), sport, 53, v6=v6), udp(bytes(r), 53, sport, to_server=False, v6=v6)]


def test_dns_names_and_answers(tmp_path: Path) -> None:
    """Query and response rows carry the query name; the response's A and AAAA records
    of the name and its CNAME chain are listed with that batch, IPv4 as ::ffff:a.b.c.d."""
    packets = dns_exchange("WWW.Example.COM.", [
        DNSRR(rrname="www.example.com.", type="CNAME", rdata="edge.example.net.", ttl=30),
        DNSRR(rrname="edge.example.net.", type="A", rdata="93.184.216.34", ttl=300),
        DNSRR(rrname="unrelated.example.", type="A", rdata="10.9.9.9", ttl=5),
        DNSRR(rrname="edge.example.net.", type="AAAA", rdata="2001:db8::34", ttl=60)], 53001)
    packets += dns_exchange("six.example", [DNSRR(rrname="six.example", type="AAAA",
                                                  rdata="2001:db8::6", ttl=7)], 53002, v6=True, qtype="AAAA")
    packets += dns_exchange("nothing.example", [], 53003)
    run = replay(packets, batch=2, path=tmp_path / "dns.pcap")
    assert run.names == {0: "www.example.com", 1: "www.example.com", 2: "six.example",
                         3: "six.example", 4: "nothing.example", 5: "nothing.example"}
    assert set(run.apps) == {"dns"}
    v6 = ipaddress.IPv6Address
    assert run.answers == [(1, "www.example.com", v6("::ffff:93.184.216.34"), 300),
                           (1, "www.example.com", v6("2001:db8::34"), 60),
                           (3, "six.example", v6("2001:db8::6"), 7)]
    assert {row + 1: name for row, name in run.names.items()} == tshark_names(run.path)


def test_dns_over_tcp(tmp_path: Path) -> None:
    """The first query of a TCP connection, its length prefix split from it; not the next."""
    c = Tcp(41500, dport=53)
    first = bytes(DNS(id=1, rd=1, qd=DNSQR(qname="First.Example")))
    second = bytes(DNS(id=2, rd=1, qd=DNSQR(qname="second.example")))
    s1 = len(first).to_bytes(2, "big") + first
    s2 = len(second).to_bytes(2, "big") + second
    answer = bytes(DNS(id=1, qr=1, qd=DNSQR(qname="First.Example"),
                       an=[DNSRR(rrname="First.Example", rdata="192.0.2.1")]))
    packets = c.handshake() + [c.data(0, s1[:1]), c.data(1, s1[1:9]), c.data(9, s1[9:]),
                               c.reply(0, len(answer).to_bytes(2, "big") + answer), c.data(len(s1), s2)]
    run = replay(packets, batch=2, path=tmp_path / "dnstcp.pcap")
    assert run.names == {5: "first.example"}
    assert run.apps[5] == "dns"
    assert {row + 1: name for row, name in run.names.items()} == tshark_names(run.path)


# --- QUIC -------------------------------------------------------------------------------------

def quic_initials(sni: str, alpn: list[str], version: int) -> list[bytes]:
    """aioquic's client's first datagrams (its Initials), in memory."""
    client = QuicConnection(configuration=QuicConfiguration(
        is_client=True, server_name=sni, alpn_protocols=alpn, verify_mode=ssl.CERT_NONE,
        original_version=version, supported_versions=[version]))
    client.connect((SERVER, 443), now=1000.0)
    return [d for d, _ in client.datagrams_to_send(1000.0)]


@pytest.mark.parametrize("version", [1, 0x6B3343CF], ids=["v1", "v2"])
@pytest.mark.parametrize("big", [False, True], ids=["one_initial", "several_initials"])
def test_quic_initial(version: int, big: bool, tmp_path: Path) -> None:
    """The SNI of a QUIC client's ClientHello on the datagram that completes it."""
    alpn = ["h3", *(f"proto-{k:03d}-" + "x" * 100 for k in range(30))] if big else ["h3"]
    datagrams = quic_initials("Quic.Example.ORG", alpn, version)
    assert len(datagrams) == (4 if big else 1)
    packets = [udp(d, 50000, 443) for d in datagrams]
    packets += [udp(d, 50001, 443) for d in datagrams[::-1]]   # reversed, another flow
    run = replay(packets, batch=3, path=tmp_path / "quic.pcap")
    n = len(datagrams)
    assert run.names == {n - 1: "quic.example.org", 2 * n - 1: "quic.example.org"}
    assert set(run.apps) == {"quic"}
    assert run.counters()["quic_names"] == 2
    if version == 1:
        assert {row + 1: name for row, name in run.names.items() if row < n} == \
            {f: name for f, name in tshark_names(run.path).items() if f <= n}


def test_quic_corrupted_initial() -> None:
    """An Initial that fails to decrypt: no name, counted malformed, nothing raised."""
    (datagram,) = quic_initials("broken.example", ["h3"], 1)
    header = pull_quic_header(Buffer(data=datagram), host_cid_length=8)
    bad = bytearray(datagram)
    bad[header.packet_length // 2] ^= 0x40   # in the protected payload (zeros pad the datagram)
    cut = datagram[:header.packet_length]     # the packet alone, in a datagram under 1200 bytes
    run = replay([udp(bytes(bad), 50002, 443), udp(cut, 50003, 443)], batch=2)
    assert run.names == {}
    for row in (0, 1):
        assert run.flags[row] & L7_MALFORMED and run.flow_flags(row) & L7_MALFORMED
        assert run.apps[row] == "quic"
    assert run.counters()["malformed"] == 2


# --- flow slots reused --------------------------------------------------------------------------

def test_reused_slot_inherits_nothing() -> None:
    """A flow table of 32 slots and 150 connections: each new flow in a slot starts with
    nothing of the previous one's (its name, its half-reassembled ClientHello)."""
    names = [f"flow{k:03d}.example" for k in range(150)]
    at = hello(names[0]).index(names[0].encode())
    packets: list[bytes] = []
    expected: dict[int, str] = {}
    for k, name in enumerate(names):
        data = hello(name)
        c = Tcp(42000 + k)
        # the tail of the ClientHello first (cut before the name): a buffer is taken
        packets += c.handshake()[:1] + [c.data(at - 20, data[at - 20:])]
        if k % 3 == 0:
            packets.append(c.data(0, data[:at - 20]))
            expected[len(packets) - 1] = name
        if k >= 40 and k % 3 == 1:
            # the head of an evicted connection's ClientHello: a new flow, which must not
            # complete a stale tail in its slot
            packets.append(Tcp(42000 + k - 40).data(0, hello(names[k - 40])[:at - 20]))
        if k % 5 == 0:  # and whole ClientHellos of flows that never send anything else
            w = Tcp(43000 + k)
            packets += [w.data(0, hello(name + ".whole"))]
            expected[len(packets) - 1] = name + ".whole"
    run = replay(packets, batch=7, pipe=pipeline(L7Config(buffers=32), FlowConfig(capacity=32)))
    assert set(run.slots) <= set(range(32))
    assert run.pipe.flows.counters()["evicted_embryonic"] > 100
    assert run.names == expected
    assert run.counters()["pool_exhausted"] == 0


# --- the names arena ----------------------------------------------------------------------------

def normalized(name: bytes) -> bytes:
    """What the arena stores: ASCII letters lower case, one trailing dot removed."""
    name = name[:-1] if name.endswith(b".") else name
    return bytes(c + 32 if 65 <= c <= 90 else c for c in name)


@pytest.mark.parametrize("name,stored", [
    (b"WWW.Example.COM.", b"www.example.com"), (b"a..", b"a."), (b".", b""), (b"", b""),
    (b"\xc3\x89COLE.Example", b"\xc3\x89cole.example"), (b"xn--BCHER-KVA.Example", b"xn--bcher-kva.example"),
    (b"[@]^_`{|}~\x00\xff", b"[@]^_`{|}~\x00\xff"), (b"Z" * 255, b"z" * 255)])
def test_arena_normalizes(name: bytes, stored: bytes) -> None:
    arena = NamesArena(4096, 16)
    assert normalized(name) == stored
    assert arena.get(arena.add(name)) == stored


def test_arena_forgets_oldest_by_count() -> None:
    arena = NamesArena(4096, 4)
    ids = [arena.add(f"n{k}.example".encode()) for k in range(6)]
    assert [arena.get(i) for i in ids] == [None, None] + [f"n{k}.example".encode() for k in range(2, 6)]
    assert arena.get(-1) is None and arena.get(6) is None


# Rings of 1020 bytes (the smallest allowed) where a wrap writes over a name while an
# older one is still readable: (names added first, the names of the lap that gets
# overwritten, then b"xyz" at offset 0 again)
ARENA_WRAPS = {
    # the first lap's last name is never reached by the second lap, which wraps early
    "old_tail": ([b"a" * 255, b"b" * 255, b"c" * 255, b"d" * 253, b"e"],
                 [b"f" * 255, b"g" * 255, b"h" * 255, b"i" * 253]),
    # an empty name (a DNS root query) at offset 0 overlaps nothing
    "empty_name": ([b""], [b"a" * 255, b"b" * 255, b"c" * 255, b"d" * 255]),
}


@pytest.mark.parametrize("case", ARENA_WRAPS)
def test_arena_wraps_over_bytes(case: str) -> None:
    """A name whose bytes the ring writes over is forgotten, never read as another's."""
    first, lap = ARENA_WRAPS[case]
    arena = NamesArena(1020, 64)
    for name in first:
        arena.add(name)
    ids = [arena.add(n) for n in lap]
    newest = arena.add(b"xyz")    # back to offset 0, over the lap's first name
    assert arena.get(newest) == b"xyz"
    assert arena.get(ids[0]) is None
    assert [arena.get(i) for i in ids[1:]] == lap[1:]


def fuzz(examples: int) -> settings:
    """Deterministic settings (derandomized, no example database)."""
    return settings(derandomize=True, database=None, deadline=None,
                    max_examples=max(10, int(examples * SCALE)),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@fuzz(300)
@given(size=st.integers(1020, 1600), slots=st.integers(1, 40),
       lengths=st.lists(st.one_of(st.integers(0, 8), st.integers(240, 255)), min_size=1, max_size=60))
def test_arena_never_returns_another_names_bytes(size: int, slots: int, lengths: list[int]) -> None:
    """Names of lengths that make the ring wrap at every point: each id reads back as
    its own name or as None."""
    names = [(f"Name{i}-" * 40).encode()[:n] for i, n in enumerate(lengths)]
    arena = NamesArena(size, slots)
    ids = [arena.add(n) for n in names]
    assert ids == list(range(len(names)))
    assert arena.get(ids[-1]) == normalized(names[-1])
    for i, name in zip(ids, names):
        assert arena.get(i) in (None, normalized(name))


# --- fuzz: random splits, orders and junk ---------------------------------------------------

FUZZ_NAMES = ("Right.Example", "decoy.example")   # same length: the two ClientHellos align
FUZZ_L7 = L7Config(buffers=4, arena_bytes=1 << 16, arena_names=1024)


@st.composite
def tcp_streams(draw) -> tuple[bool, list[tuple[bool, int, bytes]], int]:
    """(tls12, segments as (from the client, stream offset, bytes), batch size): a real
    ClientHello cut at random points, in random order, with resends, slices of a decoy
    ClientHello at their own offsets, random bytes anywhere (before the stream, past it,
    far ahead) and server segments."""
    tls12 = draw(st.booleans())
    real, decoy = (hello(n, tls12) for n in FUZZ_NAMES)
    size = len(real)
    n = draw(st.integers(1, 24))
    cuts = sorted(draw(st.lists(st.integers(1, size - 1), min_size=n - 1, max_size=n - 1, unique=True)))
    bounds = [0, *cuts, size]
    parts = [(a, real[a:b]) for a, b in zip(bounds, bounds[1:])]
    order = draw(st.permutations(range(n)))
    if draw(st.booleans()):  # every other piece first: many holes at once
        order.sort(key=lambda k: k % 2 == 0)
    segs = [(True, *parts[k]) for k in order]
    extras = draw(st.lists(st.one_of(
        st.sampled_from(parts).map(lambda p: (True, *p)),
        st.tuples(st.integers(0, size - 1), st.integers(1, 120)).map(
            lambda t: (True, t[0], decoy[t[0]:t[0] + t[1]])),
        st.tuples(st.just(True), st.integers(-64, size + 64), st.binary(min_size=1, max_size=80)),
        st.tuples(st.just(True), st.integers(1 << 16, 1 << 31), st.binary(min_size=1, max_size=80)),
        st.tuples(st.just(False), st.integers(0, 4000), st.binary(min_size=1, max_size=80))),
        max_size=8))
    for extra in extras:
        segs.insert(draw(st.integers(0, len(segs))), extra)
    return tls12, segs, draw(st.integers(1, 6))


def first_wins(segs: list[tuple[bool, int, bytes]]) -> tuple[str | None, int]:
    """The name in the client stream as first-wins reassembly makes it (read by
    reference_tls), and the index of the segment that completes its ClientHello."""
    stream: dict[int, int] = {}
    for client, off, data in segs:
        if client and 0 <= off < MAX_STREAM:
            for k, byte in enumerate(data):
                stream.setdefault(off + k, byte)
    prefix = bytearray()
    while len(prefix) in stream:
        prefix.append(stream[len(prefix)])
    ref = reference_tls.client_hello(bytes(prefix))
    if ref.status != reference_tls.OK or not ref.sni:
        return None, -1
    have = np.zeros(ref.need, bool)
    for k, (client, off, data) in enumerate(segs):
        if client and 0 <= off < MAX_STREAM:
            have[off:off + len(data)] = True
            if have.all():
                return normalized(ref.sni).decode("latin-1"), k
    raise AssertionError("a complete prefix that no segment completed")


@fuzz(150)
@given(case=tcp_streams())
def test_fuzz_reassembly(case: tuple[bool, list[tuple[bool, int, bytes]], int]) -> None:
    """Whatever the segments, nothing raises; a name reported (at most one) is the one
    first-wins reassembly of the client's bytes holds, on the row completing it: the
    real name, the decoy's, or a mix of both, as the byte received first at each offset
    decides.  No name only if there is none, or the search gave up before."""
    tls12, segs, batch = case
    c = Tcp(44000)
    packets = c.handshake() + [c.data(off, d) if client else c.reply(off, d) for client, off, d in segs]
    run = replay(packets, batch=batch, pipe=pipeline(FUZZ_L7, FlowConfig(capacity=64)))
    name, k = first_wins(segs)
    row = 3 + k   # after the TCP handshake
    if run.names:
        assert run.names == {row: name}
    else:
        gave_up = [r for r, f in enumerate(run.flags) if f & L7_GAVE_UP]
        assert name is None or (gave_up and gave_up[0] <= row)


def test_dns_on_another_port_only_when_configured(tmp_path: Path) -> None:
    """DNS off port 53 is read only with L7Config(dns_any_port=True), and then only
    payloads that parse as DNS; other UDP traffic gets no name either way."""
    query = IP(src="10.1.0.9", dst="198.51.100.53") / UDP(sport=40000, dport=5353) / DNS(
        id=7, rd=1, qd=DNSQR(qname="printer.local"))
    junk = IP(src="10.1.0.9", dst="198.51.100.54") / UDP(sport=40001, dport=9999) / (b"\x00\x07" + b"z" * 30)
    capture = write_pcap(tmp_path / "odd.pcap", [wrap(bytes(query)), wrap(bytes(junk))])
    for any_port, expect in ((False, {}), (True, {1: "printer.local"})):
        pipe = Pipeline(l7=L7Config(dns_any_port=any_port))
        got = {}
        with CaptureReader(capture, extra_bytes=pipe.extra_bytes) as reader:
            for b in reader:
                pipe.process(b, reader.extra_base)
                for i in np.flatnonzero(b.name_id[:b.n] >= 0):
                    got[int(i) + 1] = pipe.l7.arena.get(int(b.name_id[i])).decode()
        assert got == expect
