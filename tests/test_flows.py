"""engine.flows: keys, directions, the TCP table, timeouts, ICMP errors, eviction, a
SYN flood, and a differential test against the dict-based twin (reference_flows).

Batches are built by filling PacketBatch columns directly, as engine.parse would.
EGRESSD_FUZZ_SCALE scales the differential test's example count (test_boundscheck
runs this module again with every kernel recompiled with bounds checks).
"""
from __future__ import annotations

import ipaddress
import os
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SAMPLE
from egressd.engine import flows as F
from egressd.engine.batch import PacketBatch
from egressd.engine.flows import FlowConfig, FlowTable
from egressd.engine.parse import PF_FRAGMENT, PF_ICMP_ERROR, PF_REASSEMBLED, parse
from egressd.engine.pcapio import CaptureReader
from egressd.engine.reasons import N_REASONS, Verdict
from egressd.geneve.decap import decap
from reference_flows import Packet, ReferenceFlows

SCALE = float(os.environ.get("EGRESSD_FUZZ_SCALE", "1"))
S = 10**9  # ns per second
T0 = 1_700_000_000 * S
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
SEGMENTS = {"SYN": SYN, "SYNACK": SYN | ACK, "ACK": ACK, "PSHACK": PSH | ACK, "FIN": FIN,
            "FINACK": FIN | ACK, "RST": RST, "RSTACK": RST | ACK, "NONE": 0}


def v4(a: str) -> int:
    return int(ipaddress.IPv6Address("::ffff:" + a))


def v6(a: str) -> int:
    return int(ipaddress.IPv6Address(a))


CLIENT, SERVER, ROUTER = v4("10.0.0.1"), v4("198.51.100.7"), v4("192.0.2.254")
M64 = (1 << 64) - 1


def batch_of(packets: list[Packet]) -> PacketBatch:
    """The batch engine.parse would leave for these packets."""
    b = PacketBatch(max(1, len(packets)))
    b.reset(len(packets))
    for i, p in enumerate(packets):
        b.verdict[i] = p.verdict
        b.pflags[i] = p.pflags
        b.gwlb_eni[i] = p.eni
        b.gwlb_attach[i] = p.attach
        b.gwlb_cookie[i] = p.cookie
        b.ipver[i] = p.ipver
        b.proto[i] = p.proto
        b.src_hi[i], b.src_lo[i] = p.src >> 64, p.src & M64
        b.dst_hi[i], b.dst_lo[i] = p.dst >> 64, p.dst & M64
        b.sport[i] = p.sport
        b.dport[i] = p.dport
        b.tcp_flags[i] = p.tcp_flags
        b.ip_len[i] = p.ip_len
        b.ts_ns[i] = p.ts
        if p.rel is not None:
            proto, src, sport, dst, dport = p.rel
            b.rel_proto[i] = proto
            b.rel_src_hi[i], b.rel_src_lo[i] = src >> 64, src & M64
            b.rel_dst_hi[i], b.rel_dst_lo[i] = dst >> 64, dst & M64
            b.rel_sport[i] = sport
            b.rel_dport[i] = dport
    return b


def track(table: FlowTable, packets: list[Packet]) -> PacketBatch:
    b = batch_of(packets)
    table.track(b)
    return b


def tcp(flags: int, reply: bool = False, ts: int = T0, cport: int = 40000, **kw) -> Packet:
    """A segment of CLIENT:cport <-> SERVER:443, from the server if `reply`."""
    if reply:
        return Packet(SERVER, 443, CLIENT, cport, tcp_flags=flags, ts=ts, **kw)
    return Packet(CLIENT, cport, SERVER, 443, tcp_flags=flags, ts=ts, **kw)


def udp(reply: bool = False, ts: int = T0, **kw) -> Packet:
    if reply:
        return Packet(SERVER, 53, CLIENT, 5353, proto=UDP, ts=ts, **kw)
    return Packet(CLIENT, 5353, SERVER, 53, proto=UDP, ts=ts, **kw)


def slot(table: FlowTable, b: PacketBatch, i: int) -> np.void:
    assert b.flow[i] >= 0
    return table.slots[b.flow[i]]


def as_dict(r: np.void) -> dict:
    """A kernel record in reference_flows' format."""
    return {"flow_id": int(r["flow_id"]), "eni": int(r["eni"]), "attach": int(r["attach"]),
            "ipver": int(r["ipver"]), "proto": int(r["proto"]),
            "state": F.STATE_NAMES[r["state"]], "flags": int(r["flags"]),
            "reason": F.END_NAMES[r["reason"]],
            "src": ((int(r["src_hi"]) << 64) | int(r["src_lo"]), int(r["sport"])),
            "dst": ((int(r["dst_hi"]) << 64) | int(r["dst_lo"]), int(r["dport"])),
            "first_ts": int(r["first_ts"]), "last_ts": int(r["last_ts"]),
            "pkts_toserver": int(r["pkts_toserver"]), "pkts_toclient": int(r["pkts_toclient"]),
            "bytes_toserver": int(r["bytes_toserver"]),
            "bytes_toclient": int(r["bytes_toclient"]), "cookie": int(r["cookie"])}


@pytest.fixture
def table() -> FlowTable:
    return FlowTable(FlowConfig(capacity=1024))


# --- keys and directions ----------------------------------------------------------------

def test_same_tuple_through_two_endpoints_or_attachments_is_separate_flows(table):
    b = track(table, [tcp(SYN, eni=0x0A), tcp(SYN, eni=0x0B), tcp(SYN, eni=0x0A, attach=2),
                      tcp(SYN | ACK, reply=True, eni=0x0B), tcp(SYN, eni=0x0A)])
    assert list(b.flow_id[:5]) == [1, 2, 3, 2, 1]
    assert len(set(b.flow[:3].tolist())) == 3
    assert list(b.dir[:5]) == [0, 0, 0, 1, 0]
    assert table.counters()["created"] == 3
    assert slot(table, b, 0)["state"] == F.SYN_SENT
    assert slot(table, b, 1)["state"] == F.SYN_RCVD


def test_replies_land_on_the_initiators_flow_with_per_direction_counters(table):
    pkts = [tcp(SYN, ip_len=60, cookie=0xC0C0), tcp(SYN | ACK, reply=True, ip_len=60),
            tcp(ACK, ip_len=52), tcp(PSH | ACK, ip_len=552), tcp(ACK, reply=True, ip_len=1500),
            tcp(ACK, reply=True, ip_len=1500, ts=T0 + 5 * S)]
    b = track(table, pkts)
    assert set(b.flow[:6].tolist()) == {b.flow[0]} and set(b.flow_id[:6].tolist()) == {1}
    assert list(b.dir[:6]) == [0, 1, 0, 0, 1, 1]
    r = slot(table, b, 0)
    assert (r["pkts_toserver"], r["pkts_toclient"]) == (3, 3)
    assert (r["bytes_toserver"], r["bytes_toclient"]) == (60 + 52 + 552, 60 + 1500 + 1500)
    assert (r["first_ts"], r["last_ts"]) == (T0, T0 + 5 * S)
    assert r["cookie"] == 0xC0C0 and r["state"] == F.ESTABLISHED
    assert r["flags"] & F.F_SEEN_REPLY and not r["flags"] & F.F_MIDSTREAM
    (rec,) = np.concatenate(list(table.flush()))
    assert (as_dict(rec)["src"], as_dict(rec)["dst"]) == ((CLIENT, 40000), (SERVER, 443))
    assert F.END_NAMES[rec["reason"]] == "shutdown"


def test_flows_keep_their_slot_across_batches_and_ipv6_and_echo_work(table):
    a, z = v6("2001:db8::1"), v6("2001:db8::2")
    b1 = track(table, [Packet(a, 7, z, 7, proto=ICMPV6, ipver=6, ts=T0),
                       Packet(a, 5000, z, 443, proto=UDP, ipver=6, ts=T0), tcp(ACK)])
    b2 = track(table, [Packet(z, 7, a, 7, proto=ICMPV6, ipver=6, ts=T0 + S),
                       Packet(z, 443, a, 5000, proto=UDP, ipver=6, ts=T0 + S),
                       tcp(ACK, reply=True, ts=T0 + S)])
    assert list(b2.flow[:3]) == list(b1.flow[:3])
    assert list(b2.flow_id[:3]) == [1, 2, 3] and list(b2.dir[:3]) == [1, 1, 1]
    assert all(slot(table, b2, i)["flags"] & F.F_SEEN_REPLY for i in range(3))
    assert slot(table, b1, 2)["flags"] & F.F_MIDSTREAM


def test_dropped_rows_and_unreassembled_fragments_get_no_flow(table):
    b = track(table, [udp(verdict=Verdict.DROP), udp(pflags=PF_FRAGMENT),
                      udp(pflags=PF_FRAGMENT | PF_REASSEMBLED), udp()])
    assert list(b.flow[:4]) == [-1, -1, b.flow[2], b.flow[2]] and b.flow[2] >= 0
    assert list(b.flow_id[:4]) == [0, 0, 1, 1]
    assert table.counters()["created"] == 1
    assert slot(table, b, 2)["pkts_toserver"] == 2


def test_equal_endpoints_count_as_from_the_initiator(table):
    b = track(table, [Packet(CLIENT, 9, CLIENT, 9, proto=UDP),
                      Packet(CLIENT, 9, CLIENT, 9, proto=UDP)])
    assert list(b.dir[:2]) == [0, 0] and list(b.flow_id[:2]) == [1, 1]
    assert not slot(table, b, 0)["flags"] & F.F_SEEN_REPLY


TSHARK_FIELDS = ("geneve.option.type", "geneve.option.unknown.data", "tcp.stream", "udp.stream",
                 "icmp.ident", "icmpv6.echo.identifier", "ip.src", "ipv6.src", "tcp.srcport",
                 "udp.srcport")


def test_sample_capture_flows_are_tsharks_streams_per_endpoint(tshark):
    """End to end on pcaps/sample-gwlb.pcap (decap, parse, flows, in batches of 16):
    our flows are tshark's TCP/UDP streams and ICMP echo identifiers, split by the GWLB
    endpoint id tshark shows in the GENEVE options; dir is 0 exactly for packets from
    the stream's first sender."""
    args = [a for f in TSHARK_FIELDS for a in ("-e", f)]
    out = subprocess.run([tshark, "-r", str(SAMPLE), "-T", "fields", "-E", "separator=;", *args],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    theirs = []
    for line in out.splitlines():
        v = dict(zip(TSHARK_FIELDS, line.split(";")))
        eni = dict(zip(v["geneve.option.type"].split(","),
                       v["geneve.option.unknown.data"].split(",")))["0x01"]
        last = {k: x.split(",")[-1] for k, x in v.items()}  # the inner layer's value
        stream = next(f"{k}={last[k]}" for k in ("tcp.stream", "icmp.ident",
                                                  "icmpv6.echo.identifier", "udp.stream")
                      if last[k])
        sender = (last["ipv6.src"] or last["ip.src"], last["tcp.srcport"] or last["udp.srcport"])
        theirs.append(((eni, stream), sender))

    table = FlowTable(FlowConfig(capacity=1024))
    counts = np.zeros(N_REASONS, np.uint64)
    ours = []
    for b in CaptureReader(SAMPLE, batch_packets=16):
        decap(b, counts)
        parse(b, counts)
        table.track(b)
        ours += list(zip(b.flow_id[:b.n].tolist(), b.dir[:b.n].tolist()))
    assert len(ours) == len(theirs) == 105 and not counts[1:].any()
    first_sender: dict = {}
    pairs = set()
    for (fid, d), (key, sender) in zip(ours, theirs):
        pairs.add((fid, key))
        assert d == (first_sender.setdefault(key, sender) != sender)
    assert len(pairs) == len({f for f, _ in pairs}) == len({k for _, k in pairs}) == 11
    c = table.counters()
    assert (c["created"], c["midstream"], c["active"]) == (11, 0, 11)


# --- TCP ------------------------------------------------------------------------------

# first segment -> state, midstream, dir of that segment
FIRST = """
SYN     syn_sent    -  0
SYNACK  syn_rcvd    M  1
ACK     established M  0
PSHACK  established M  0
NONE    established M  0
FIN     fin_wait    M  0
FINACK  fin_wait    M  0
RST     closed      M  0
RSTACK  closed      M  0
"""

# how each start state is reached: segments from the client (c) or server (s)
PREFIX = {
    "syn_sent": "c:SYN",
    "syn_rcvd": "c:SYN s:SYNACK",
    "established": "c:SYN s:SYNACK c:ACK",
    "fin_wait/c": "c:SYN s:SYNACK c:ACK c:FINACK",
    "fin_wait/s": "c:SYN s:SYNACK c:ACK s:FINACK",
    "closed": "c:SYN s:SYNACK c:ACK c:FINACK s:FINACK",
}

# from state, segment -> state after it from the initiator (c), from the responder (s);
# "new" = the flow ended (reused) and a new one starts in syn_sent
TRANSITIONS = """
syn_sent     SYN     syn_sent     syn_sent
syn_sent     SYNACK  syn_sent     syn_rcvd
syn_sent     ACK     syn_sent     syn_sent
syn_sent     FIN     syn_sent     syn_sent
syn_sent     FINACK  syn_sent     syn_sent
syn_sent     RST     closed       closed
syn_rcvd     SYN     syn_rcvd     syn_rcvd
syn_rcvd     SYNACK  syn_rcvd     syn_rcvd
syn_rcvd     ACK     established  syn_rcvd
syn_rcvd     FIN     syn_rcvd     syn_rcvd
syn_rcvd     FINACK  fin_wait     syn_rcvd
syn_rcvd     RST     closed       closed
established  SYN     established  established
established  SYNACK  established  established
established  ACK     established  established
established  FIN     fin_wait     fin_wait
established  FINACK  fin_wait     fin_wait
established  RSTACK  closed       closed
fin_wait/c   SYN     fin_wait     fin_wait
fin_wait/c   ACK     fin_wait     fin_wait
fin_wait/c   FINACK  fin_wait     closed
fin_wait/c   FIN     fin_wait     closed
fin_wait/c   RST     closed       closed
fin_wait/s   ACK     fin_wait     fin_wait
fin_wait/s   FINACK  closed       fin_wait
fin_wait/s   FIN     closed       fin_wait
fin_wait/s   RSTACK  closed       closed
closed       SYN     new          new
closed       SYNACK  closed       closed
closed       ACK     closed       closed
closed       FINACK  closed       closed
closed       RST     closed       closed
"""


def _rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.strip().splitlines()]


def _segments(spec: str, cport: int, ts: int) -> list[Packet]:
    return [tcp(SEGMENTS[seg], reply=who == "s", cport=cport, ts=ts)
            for who, seg in (step.split(":") for step in spec.split())]


def test_first_segment_table(table):
    rows = _rows(FIRST)
    b = track(table, [tcp(SEGMENTS[seg], cport=1000 + k) for k, (seg, *_) in enumerate(rows)])
    for k, (seg, state, mid, d) in enumerate(rows):
        r = slot(table, b, k)
        assert (F.STATE_NAMES[r["state"]], bool(r["flags"] & F.F_MIDSTREAM), b.dir[k]) \
            == (state, mid == "M", int(d)), seg
    assert table.counters()["midstream"] == len(rows) - 1


def test_transition_table(table):
    cases = []
    for start, seg, by_c, by_s in _rows(TRANSITIONS):
        cases += [(start, seg, "c", by_c), (start, seg, "s", by_s)]
    packets, last = [], []
    for k, (start, seg, who, _) in enumerate(cases):
        packets += _segments(f"{PREFIX[start]} {who}:{seg}", cport=2000 + k, ts=T0)
        last.append(len(packets) - 1)
    b = track(table, packets)
    for k, (start, seg, who, want) in enumerate(cases):
        i = last[k]
        before = b.flow_id[i - 1]
        r = slot(table, b, i)
        if want == "new":
            assert b.flow_id[i] != before and r["state"] == F.SYN_SENT, (start, seg, who)
            assert b.dir[i] == 0 and not r["flags"] & F.F_MIDSTREAM
        else:
            assert b.flow_id[i] == before, (start, seg, who)
            assert F.STATE_NAMES[r["state"]] == want.split("/")[0], (start, seg, who)
    n_new = sum(want == "new" for *_, want in cases)
    assert table.counters()["reused"] == n_new
    reused = [as_dict(r) for r in table.drain_records()]
    assert len(reused) == n_new and {r["reason"] for r in reused} == {"reused"}
    assert {r["state"] for r in reused} == {"closed"}


def test_close_flags_record_which_side_and_rst(table):
    b = track(table, _segments(PREFIX["closed"], 1, T0) + _segments(PREFIX["fin_wait/s"], 2, T0)
              + _segments("c:SYN s:RSTACK", 3, T0))
    assert slot(table, b, 4)["flags"] & (F.F_FIN_INIT | F.F_FIN_RESP) == F.F_FIN_INIT | F.F_FIN_RESP
    assert slot(table, b, 8)["flags"] & (F.F_FIN_INIT | F.F_FIN_RESP) == F.F_FIN_RESP
    r = slot(table, b, 10)
    assert r["state"] == F.CLOSED and r["flags"] & F.F_RST and r["flags"] & F.F_SEEN_REPLY


# --- timeouts ---------------------------------------------------------------------------

@pytest.mark.parametrize("make, idle_s", [(tcp, 350), (udp, 120)])
def test_idle_timeout_boundaries(table, make, idle_s):
    limit = idle_s * S
    kw = {"flags": ACK} if make is tcp else {}
    t1 = T0 + limit
    t2 = t1 + limit + 1
    b = track(table, [make(ts=T0, **kw), make(reply=True, ts=t1, **kw),
                      make(ts=t2, **kw), make(reply=True, ts=t2, **kw)])
    assert list(b.flow_id[:4]) == [1, 1, 2, 2]
    assert b.flow[2] == b.flow[0]  # the new flow starts in the old one's slot
    assert list(b.dir[:4]) == [0, 1, 0, 1]
    (rec,) = table.drain_records()
    assert F.END_NAMES[rec["reason"]] == "timeout"
    assert (rec["flow_id"], rec["first_ts"], rec["last_ts"]) == (1, T0, t1)
    assert (rec["pkts_toserver"], rec["pkts_toclient"]) == (1, 1)
    c = table.counters()
    assert (c["created"], c["timed_out"], c["active"]) == (2, 1, 1)


def test_timeouts_are_configurable_and_flush_tells_timeout_from_shutdown():
    cfg = FlowConfig(capacity=64, tcp_idle_s=10, other_idle_s=2.5)
    table = FlowTable(cfg)
    late = T0 + 2_500_000_001
    b = track(table, [udp(ts=T0), tcp(ACK, ts=T0), udp(ts=late),
                      Packet(CLIENT, 1, SERVER, 2, proto=UDP, ts=late)])
    assert list(b.flow_id[:4]) == [1, 2, 3, 4] and table.counters()["timed_out"] == 1
    records = np.concatenate(list(table.flush(now_ns=late + 2_500_000_001)))
    reasons = [(int(r["flow_id"]), F.END_NAMES[r["reason"]]) for r in records]
    assert reasons[0] == (1, "timeout")  # ended by a packet, still waiting to be drained
    assert sorted(reasons[1:]) == [(2, "shutdown"), (3, "timeout"), (4, "timeout")]
    c = table.counters()
    assert (c["active"], c["timed_out"], c["flushed"]) == (0, 3, 1) and not table.tags.any()
    assert list(table.flush()) == []
    # by default `now` is the latest packet seen
    table = FlowTable(cfg)
    track(table, [udp(ts=T0), tcp(ACK, ts=T0 + 3 * S)])
    records = np.concatenate(list(table.flush()))
    assert {int(r["flow_id"]): F.END_NAMES[r["reason"]] for r in records} \
        == {1: "timeout", 2: "shutdown"}


def test_out_of_order_timestamps_never_move_last_seen_back(table):
    b = track(table, [udp(ts=T0 + 10 * S), udp(ts=T0 + 3 * S)])
    r = slot(table, b, 0)
    assert (r["first_ts"], r["last_ts"], r["pkts_toserver"]) == (T0 + 10 * S, T0 + 10 * S, 2)


# --- ICMP errors ------------------------------------------------------------------------

def test_icmp_errors_are_tied_to_the_flow_they_quote(table):
    b = track(table, [udp(ts=T0), udp(reply=True, ts=T0), tcp(SYN, ts=T0)])
    before = table.slots[b.flow[0]].copy()
    err = dict(proto=ICMP, pflags=PF_ICMP_ERROR, ts=T0 + S)
    b2 = track(table, [
        # port unreachable from the server for the client's datagram: goes to the client
        Packet(SERVER, 0, CLIENT, 0, rel=(UDP, CLIENT, 5353, SERVER, 53), **err),
        # a router's time exceeded for the server's reply: goes to the server (responder)
        Packet(ROUTER, 0, SERVER, 0, rel=(UDP, SERVER, 53, CLIENT, 5353), **err),
        # quoting the TCP SYN
        Packet(ROUTER, 0, CLIENT, 0, rel=(TCP, CLIENT, 40000, SERVER, 443), **err),
        # unrelated: no such flow, other endpoint id, an idled-out flow
        Packet(SERVER, 0, CLIENT, 0, rel=(UDP, CLIENT, 5354, SERVER, 53), **err),
        Packet(SERVER, 0, CLIENT, 0, rel=(UDP, CLIENT, 5353, SERVER, 53), **{**err, "eni": 9}),
        Packet(SERVER, 0, CLIENT, 0, rel=(UDP, CLIENT, 5353, SERVER, 53),
               **{**err, "ts": T0 + 121 * S}),
    ])
    assert list(b2.flow[:6]) == [b.flow[0], b.flow[0], b.flow[2], -1, -1, -1]
    assert list(b2.flow_id[:6]) == [1, 1, 2, 0, 0, 0]
    assert list(b2.dir[:6]) == [1, 0, 1, 0, 0, 0]
    c = table.counters()
    assert (c["icmp_related"], c["icmp_unrelated"], c["created"]) == (3, 3, 2)
    assert table.slots[b.flow[0]].tolist() == before.tolist()  # state and counters untouched


# --- eviction ---------------------------------------------------------------------------

def test_eviction_order_expired_closed_embryonic_then_oldest_idle():
    """Capacity 32: two buckets, so the eviction window is the whole table."""
    table = FlowTable(FlowConfig(capacity=2 * F.BUCKET))
    setup, kind = [], {}
    port = iter(range(3000, 4000))

    def flow(spec: str, at: int, label: str, proto: int = TCP) -> None:
        p = next(port)
        if proto == UDP:
            setup.extend([Packet(CLIENT, p, SERVER, 53, proto=UDP, ts=at),
                          Packet(SERVER, 53, CLIENT, p, proto=UDP, ts=at)])
        else:
            setup.extend(_segments(spec, p, at))
        kind[p] = label

    flow("", T0, "expired", UDP)                       # replied, but idle 130 s > 120 s
    for k in range(4):
        flow("c:SYN", T0 + (1 + k) * S, "embryonic")   # older than every closed flow
    for k in range(4):
        flow("c:SYN s:SYNACK c:RST", T0 + (10 + k) * S, "closed")
    flow("c:ACK s:ACK", T0 + S // 2, "idle")           # older than all, but established
    for k in range(2 * F.BUCKET - 10):
        flow("c:SYN s:SYNACK c:ACK", T0 + (20 + k) * S, "idle")
    track(table, setup)
    assert table.counters()["active"] == 2 * F.BUCKET and not table.drain_records().size

    now = T0 + 130 * S  # newcomers: a datagram and its reply each, so never embryonic
    new = [Packet(v4("10.9.9.9"), 100 + k, SERVER, 53, proto=UDP, ts=now + k)
           for k in range(2 * F.BUCKET)]
    track(table, [p for q in new for p in (q, Packet(q.dst, q.dport, q.src, q.sport,
                                                       proto=UDP, ts=q.ts))])
    ended = table.drain_records()
    assert len(ended) == 2 * F.BUCKET
    got = [(kind[int(r["sport"])], F.END_NAMES[r["reason"]]) for r in ended]
    want = ([("expired", "timeout")] + [("closed", "evicted_closed")] * 4
            + [("embryonic", "evicted_embryonic")] * 4
            + [("idle", "evicted_idle")] * (2 * F.BUCKET - 9))
    assert got == want
    for label in ("closed", "embryonic", "idle"):  # oldest first within each class
        ts = [int(r["last_ts"]) for r in ended if kind[int(r["sport"])] == label]
        assert ts == sorted(ts), label
    c = table.counters()
    assert (c["timed_out"], c["evicted_closed"], c["evicted_embryonic"], c["evicted_idle"]) \
        == (1, 4, 4, 2 * F.BUCKET - 9)
    assert c["active"] == 2 * F.BUCKET


def _syn_flood(table: FlowTable, b: PacketBatch, first: int, syns: int, t: int) -> None:
    """SYNs of distinct flows `first`, ..., `first + syns - 1` (from 172.16.0.0/12), 1 us
    apart, a batch at a time."""
    for lo in range(0, syns, b.capacity):
        n = min(b.capacity, syns - lo)
        ids = np.arange(first + lo, first + lo + n, dtype=np.uint64)
        b.reset(n)
        b.pflags[:n] = 0
        b.ipver[:n] = 4
        b.proto[:n] = TCP
        b.gwlb_eni[:n] = 1
        b.gwlb_attach[:n] = 1
        b.src_hi[:n] = 0
        b.dst_hi[:n] = 0
        b.src_lo[:n] = np.uint64(v4("172.16.0.0")) + (ids >> np.uint64(16))
        b.sport[:n] = ids & np.uint64(0xFFFF)
        b.dst_lo[:n] = SERVER
        b.dport[:n] = 443
        b.tcp_flags[:n] = SYN
        b.ts_ns[:n] = t + (lo + np.arange(n)) * 1000
        table.track(b)
        assert table.drain_records().size <= n


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_syn_flood_keeps_established_flows_and_memory_flat():
    """1 M distinct SYNs into a 64 k table holding 2,000 established flows (bench/flows.py
    runs the full 10 M into 1 M)."""
    table = FlowTable(FlowConfig(capacity=1 << 16))
    b = track(table, [p for k in range(2000)
                      for p in _segments("c:SYN s:SYNACK c:ACK", 10000 + k, T0)])
    ids = b.flow_id[2:6000:3].copy()
    arrays = {name: (id(a), a.nbytes) for name, a in vars(table).items()
              if isinstance(a, np.ndarray)}
    flood = PacketBatch(1 << 16)
    _syn_flood(table, flood, 0, 1 << 17, T0 + S)   # fill, and touch every buffer
    rss = _rss()
    _syn_flood(table, flood, 1 << 17, 1 << 20, T0 + 2 * S)
    assert _rss() - rss < 8 << 20
    after = {name: (id(a), a.nbytes) for name, a in vars(table).items()
             if isinstance(a, np.ndarray)}
    for name in ("slots", "tags", "_counters"):
        assert after[name] == arrays[name], name
    c = table.counters()
    assert c["evicted_embryonic"] >= 1 << 20 and c["evicted_idle"] == 0
    assert c["active"] == 1 << 16
    # every established flow is still there: its next packet finds it
    b = track(table, [tcp(ACK, cport=10000 + k, ts=T0 + 10 * S) for k in range(2000)])
    assert (b.flow_id[:2000] == ids).all()
    assert table.counters()["created"] == c["created"]


# --- configuration and memory -------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"capacity": 1000}, {"capacity": 16}, {"capacity": 1 << 31},
                                {"tcp_idle_s": 0}, {"other_idle_s": float("nan")}])
def test_bad_configuration_is_refused(kw):
    with pytest.raises(ValueError):
        FlowConfig(**kw)


def test_default_table_is_a_million_slots_within_200_mb():
    table = FlowTable()
    assert table.config.capacity == 1 << 20
    assert table.config.tcp_idle_s == 350 and table.config.other_idle_s == 120
    assert table.nbytes == (1 << 20) * table.bytes_per_slot <= 200_000_000


# --- differential test against the reference ----------------------------------------------

HOSTS = {4: [v4("10.0.0.1"), v4("10.0.0.2")], 6: [v6("2001:db8::1"), v6("2001:db8::2")]}
GAPS = [1, 119 * S, 120 * S, 120 * S + 1, 350 * S, 350 * S + 1, -S]


@st.composite
def conversations(draw) -> tuple:
    """(ipver, proto, endpoint, endpoint, GWLB endpoint id, attachment id)."""
    ipver = draw(st.sampled_from([4, 4, 6]))
    proto = draw(st.sampled_from([TCP, TCP, TCP, UDP, ICMP if ipver == 4 else ICMPV6, 47]))
    ports = st.sampled_from([0, 7]) if proto in (ICMP, ICMPV6, 47) else st.sampled_from([80, 1000])
    a = (draw(st.sampled_from(HOSTS[ipver])), draw(ports))
    b = (draw(st.sampled_from(HOSTS[ipver])), a[1] if proto in (ICMP, ICMPV6, 47) else draw(ports))
    return ipver, proto, a, b, draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 1, 2]))


@st.composite
def packets(draw) -> list[Packet]:
    """Packets of a few conversations (so that flows repeat, close and reopen), in both
    directions, with gaps of a few seconds, now and then one at a timeout's edge or
    backwards."""
    pool = draw(st.lists(conversations(), min_size=1, max_size=5))
    out = []
    ts = T0
    for _ in range(draw(st.integers(1, 60))):
        ts += draw(st.sampled_from(GAPS) if draw(st.integers(0, 7)) == 0
                   else st.integers(0, 2 * S))
        ipver, proto, a, b, eni, attach = draw(st.sampled_from(pool) | conversations())
        (src, sport), (dst, dport) = (b, a) if draw(st.booleans()) else (a, b)
        p = Packet(src, sport, dst, dport, proto=proto, ipver=ipver, eni=eni, attach=attach,
                   tcp_flags=draw(st.sampled_from(list(SEGMENTS.values()) * 4)
                                  | st.integers(0, 255)),
                   ip_len=draw(st.integers(20, 9000)), ts=ts,
                   cookie=draw(st.integers(0, 2**32 - 1)),
                   pflags=draw(st.sampled_from([0] * 6 + [PF_FRAGMENT,
                                                          PF_FRAGMENT | PF_REASSEMBLED])),
                   verdict=draw(st.sampled_from([0] * 7 + [Verdict.DROP])))
        if draw(st.integers(0, 5)) == 0:  # an ICMP error, mostly quoting an earlier packet
            q = draw(st.sampled_from(out)) if out and draw(st.integers(0, 3)) else p
            p = Packet(draw(st.sampled_from(HOSTS[q.ipver])), 0, q.src, 0,
                       proto=ICMP if q.ipver == 4 else ICMPV6, ipver=q.ipver, eni=q.eni,
                       attach=q.attach, ts=ts, pflags=PF_ICMP_ERROR | (p.pflags & PF_FRAGMENT),
                       rel=(q.proto, q.src, q.sport, q.dst, q.dport))
        out.append(p)
    return out


def fuzz(examples: int) -> settings:
    return settings(derandomize=True, database=None, deadline=None,
                    max_examples=max(10, int(examples * SCALE)),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@fuzz(200)
@given(pkts=packets(), cuts=st.lists(st.integers(0, 60), max_size=4))
def test_matches_the_reference(pkts, cuts):
    table = FlowTable(FlowConfig(capacity=1 << 12))
    ref = ReferenceFlows(350 * S, 120 * S)
    want = [ref.packet(p) for p in pkts]
    got, records = [], []
    edges = sorted({0, len(pkts), *(c for c in cuts if c < len(pkts))})
    for lo, hi in zip(edges, edges[1:]):  # several batches: state carries over
        b = track(table, pkts[lo:hi])
        got += list(zip(b.flow_id[:b.n].tolist(), b.dir[:b.n].tolist()))
        assert all((b.flow[:b.n] >= 0) == (b.flow_id[:b.n] > 0))
        records += [as_dict(r) for r in table.drain_records()]
    assert got == want
    records += [as_dict(r) for chunk in table.flush() for r in chunk]
    ref.flush()
    key = lambda r: r["flow_id"]  # noqa: E731
    assert sorted(records, key=key) == sorted(ref.records, key=key)
    c = table.counters()
    assert {k: c[k] for k in ref.counts} == ref.counts
    assert c["evicted_closed"] == c["evicted_embryonic"] == c["evicted_idle"] == 0
    assert c["active"] == 0
