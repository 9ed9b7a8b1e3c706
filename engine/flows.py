"""Stage 3: connection tracking, the flow table of DESIGN.md "Flow tracking".

Key.  A flow is (GWLB endpoint id, attachment id, IP version, protocol, two endpoints),
an endpoint being (128-bit address, port); ICMP echo uses its identifier as both ports.
The endpoints are stored in canonical order, the lower (address, port) first ("side
a"), so both directions hash and compare equal; a flag remembers which side
initiated.  The same inner 5-tuple arriving through two GWLB endpoints (two VPCs) or
two attachments is two flows.

Layout.  One row of 128 bytes per slot (two cache lines: the key, `last_ts`, state and
flags in the first; counters and the slots later stages fill in the second) plus a
32-bit tag per slot: 132 bytes a slot, 138 MB (132 MiB) for the default 1,048,576
slots.  Rows rather than one array per field, because a packet then touches three
cache lines (tags, row line 1, row line 2) instead of about fourteen: measured 2.5x
faster at 100 k random flows.  Plain pages: transparent huge pages measured no faster
here, and faulting them in stalls on memory compaction once the page cache is full
(a replay writing its output), which cost a replay up to 0.4 s.

Buckets.  Slots form buckets of 16, whose 16 tags fill one cache line.  A 64-bit hash
of the key gives a tag (its low 32 bits, never 0: 0 marks an empty slot) and two
buckets: b1 from bits 32 and up, b2 = b1 ^ (bits 8 and up | 1), so b2 != b1.  A lookup
compares the tags of b1, then of b2, with one vector compare each, and the full key
on a tag match; a new flow takes the first free slot of the emptier bucket.  Buckets
of 16 rather than 8: two-choice buckets of 8 start overflowing (evicting) at 72% load
and overflow on 2% of inserts at 95%, buckets of 16 at 87% and 0.4%, at the same
speed.  The probe is software-pipelined (VPP style): the tag lines of the packet 16
rows ahead and the row of the packet 8 rows ahead are prefetched, so that the cache
misses of several packets overlap (2.5x faster at 100 k flows).

Slots never move, so a packet's `flow` column stays valid for later stages of its
batch -- except that a later packet of the same batch may evict the flow (a full
table under a flood): stages compare the row's `flow_id` with the slot's before
trusting it.

Eviction.  When both buckets are full, the victim is chosen among their 32 slots in
this order: expired (idle past its timeout) > TCP CLOSED > embryonic (no reply
seen) > established; within a class the longest idle (smallest last_ts), the first
scanned on a tie.  This bounded window is the eviction sample: "oldest idle" is exact
among the 32 candidates, approximate over the table.  The victim's record is emitted,
its class counted, its slot reused.  Nothing is allocated per packet and the table
never grows: a flood of new flows can only replace embryonic and idle ones.

Timeouts.  GWLB's idle timeouts (TCP 350 s, others 120 s; configurable), applied
lazily with packet timestamps: a packet finding its flow idle for more than the
timeout ends it (record, reason timeout) and starts a new flow (new flow_id) in the
same slot; a replay of a day-long capture ages flows as the network did.  `last_ts`
never goes backwards (out-of-order capture timestamps).

TCP state machine.  Segment classes are checked in this order; "init"/"resp" is the
sender, the flow's initiator or responder:

    state         segment                       next state
    any           RST                           CLOSED (flag RST)
    CLOSED        pure SYN (no ACK, no RST)     flow ends (reason reused), a new flow starts
    SYN_SENT      SYN+ACK from resp             SYN_RCVD
    other         SYN (with or without ACK)     unchanged (retransmission, SYN on an open flow)
    SYN_RCVD      ACK from init                 ESTABLISHED, then the FIN rows if FIN is set
    ESTABLISHED   FIN from X                    FIN_WAIT (flag FIN_INIT or FIN_RESP for X)
    FIN_WAIT      FIN from the other side       CLOSED (flag FIN_INIT or FIN_RESP for it)
    anything else                               unchanged

The first packet of a flow sets its initial state, then the rows above apply to it:

    pure SYN              SYN_SENT, initiator = sender
    SYN+ACK (no RST)      SYN_RCVD, MIDSTREAM, initiator = receiver
    anything else         ESTABLISHED, MIDSTREAM, initiator = sender
                          (so a first FIN gives FIN_WAIT, a first RST gives CLOSED)

UDP, ICMP and other protocols are pseudo-flows (state NONE).  Every responder packet
sets SEEN_REPLY; a flow without it is embryonic.  A packet whose two endpoints are
equal counts as from the initiator.

Batch columns.  Filled per row: `flow` (slot, -1 for none), `flow_id` (1, 2, ... in
creation order, 0 for none), `dir` (0 from the initiator: "toserver"; 1 from the
responder: "toclient") and `est`, Suricata's `flow:established` for the row (measured
with Suricata 7.0.10: a TCP packet is established when the flow was before it, so the
handshake's last ACK is not; a UDP packet when a reply has been seen, this one included).  Rows get no flow when dropped already or when they are
fragments that were not reassembled.  An ICMP error (PF_ICMP_ERROR) only looks up the
flow of the packet it quotes (same endpoint and attachment), never creates one nor
changes its state or counters; it travels toward the quoted packet's sender, so its
dir is 1 when that sender is the initiator.  A quoted flow that is not tracked or has
idled out leaves the error unrelated (no flow); both outcomes are counted.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from egressd.engine import tables
from egressd.engine.batch import PacketBatch
from egressd.engine.parse import PF_FRAGMENT, PF_ICMP_ERROR, PF_REASSEMBLED, PROTO_TCP
from egressd.engine.reasons import Verdict

TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10

# TCP states (pseudo-flows keep NONE)
NONE, SYN_SENT, SYN_RCVD, ESTABLISHED, FIN_WAIT, CLOSED = range(6)
STATE_NAMES = ("none", "syn_sent", "syn_rcvd", "established", "fin_wait", "closed")

# flow flags; F_INIT_B is internal (which canonical side initiated) and left out of records
F_MIDSTREAM, F_SEEN_REPLY, F_FIN_INIT, F_FIN_RESP, F_RST = 0x01, 0x02, 0x04, 0x08, 0x10
F_INIT_B = 0x80

# why a flow ended (record field `reason`)
END_TIMEOUT, END_EVICTED_CLOSED, END_EVICTED_EMBRYONIC, END_EVICTED_IDLE, END_REUSED, \
    END_SHUTDOWN = range(1, 7)
END_NAMES = ("", "timeout", "evicted_closed", "evicted_embryonic", "evicted_idle", "reused",
             "shutdown")

# counter slots
C_CREATED, C_ACTIVE, C_TIMED_OUT, C_EVICTED_CLOSED, C_EVICTED_EMBRYONIC, C_EVICTED_IDLE, \
    C_REUSED, C_MIDSTREAM, C_ICMP_RELATED, C_ICMP_UNRELATED, C_FLUSHED = range(11)
COUNTER_NAMES = ("created", "active", "timed_out", "evicted_closed", "evicted_embryonic",
                 "evicted_idle", "reused", "midstream", "icmp_related", "icmp_unrelated",
                 "flushed")
# END_* -> the counter it bumps
_END_COUNTER = np.array([0, C_TIMED_OUT, C_EVICTED_CLOSED, C_EVICTED_EMBRYONIC, C_EVICTED_IDLE,
                         C_REUSED, C_FLUSHED], dtype=np.int64)

BUCKET = 16
MIN_CAPACITY = 2 * BUCKET
MAX_CAPACITY = 1 << 30

SLOT_DTYPE = np.dtype([
    # cache line 1: what every lookup reads
    ("eni", np.uint64), ("attach", np.uint64),
    ("a_hi", np.uint64), ("a_lo", np.uint64), ("b_hi", np.uint64), ("b_lo", np.uint64),
    ("a_port", np.uint16), ("b_port", np.uint16), ("proto", np.uint8), ("ipver", np.uint8),
    ("state", np.uint8), ("flags", np.uint8),
    ("last_ts", np.int64),
    # cache line 2: counters, identity, and the slots later stages fill
    ("first_ts", np.int64),
    ("pkts_toserver", np.uint64), ("pkts_toclient", np.uint64),
    ("bytes_toserver", np.uint64), ("bytes_toclient", np.uint64),
    ("flow_id", np.uint64),
    ("cookie", np.uint32),    # GWLB flow cookie of the flow's first packet
    ("rule", np.int32),       # policy stage: rule that decided the flow, -1 none
    ("verdict", np.uint8),    # policy stage: Verdict cached on the flow
], align=True)
assert SLOT_DTYPE.itemsize == 128

# A flow as it ended: the initiator is src, the responder dst (EVE flow events).
RECORD_DTYPE = np.dtype([
    ("flow_id", np.uint64), ("eni", np.uint64), ("attach", np.uint64),
    ("ipver", np.uint8), ("proto", np.uint8), ("state", np.uint8), ("flags", np.uint8),
    ("reason", np.uint8), ("verdict", np.uint8),
    ("src_hi", np.uint64), ("src_lo", np.uint64), ("sport", np.uint16),
    ("dst_hi", np.uint64), ("dst_lo", np.uint64), ("dport", np.uint16),
    ("first_ts", np.int64), ("last_ts", np.int64),
    ("pkts_toserver", np.uint64), ("pkts_toclient", np.uint64),
    ("bytes_toserver", np.uint64), ("bytes_toclient", np.uint64),
    ("cookie", np.uint32), ("rule", np.int32),
], align=True)

# per-packet work kinds of the first pass
_K_SKIP, _K_TRACK, _K_ICMP_ERROR = 0, 1, 2
_K_SENDER_B = 4   # the sender (the quoted sender for ICMP errors) is canonical side b
_K_SAME = 8       # both endpoints equal: the sender is always the initiator

_AHEAD = 8                          # prefetch distance, packets
_ROW_WORDS = SLOT_DTYPE.itemsize // 8

_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)


@dataclass(frozen=True)
class FlowConfig:
    """Flow table settings; the defaults are GWLB's idle timeouts."""

    capacity: int = 1 << 20
    tcp_idle_s: float = 350.0
    other_idle_s: float = 120.0

    def __post_init__(self) -> None:
        c = self.capacity
        if not (isinstance(c, (int, np.integer)) and MIN_CAPACITY <= c <= MAX_CAPACITY
                and c & (c - 1) == 0):
            raise ValueError(f"flow table capacity must be a power of two between "
                             f"{MIN_CAPACITY} and {MAX_CAPACITY}, not {c!r}")
        for name in ("tcp_idle_s", "other_idle_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {v!r}")


# --- kernels ---------------------------------------------------------------------------

def _element_ptr(context, builder, sig, args):
    """LLVM pointer to args[0][args[1]] (an intrinsic's array and index arguments),
    unchecked: the callers index within the array by construction."""
    aryty = sig.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False,
                                    boundscheck=False)


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to load arr[idx] into the caches (LLVM's prefetch; no fault, no
    bounds check: a hint about any address is harmless)."""
    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig, args)
        i32 = ir.IntType(32)
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0")
        # a read, to be kept in every cache level, of data
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, idx), codegen


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _buckets(h, bmask):
    """(tag, first slot of b1, first slot of b2) of a hash."""
    tag = np.uint32(h & _M32)
    if tag == 0:
        tag = np.uint32(1)
    b1 = (h >> _U64(32)) & bmask
    b2 = b1 ^ (((h >> _U64(8)) & bmask) | _U64(1))
    return tag, np.uintp(b1 * _U64(BUCKET)), np.uintp(b2 * _U64(BUCKET))


@intrinsic
def _lanes_equal(typingctx, tags, base, tag):
    """Bit mask of the slots of the bucket starting at `base` whose tag equals `tag`:
    one vector load and compare (LLVM does not vectorise the equivalent loop here)."""
    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig, args)
        i32 = ir.IntType(32)
        vty = ir.VectorType(i32, BUCKET)
        lanes = builder.load(builder.bitcast(ptr, vty.as_pointer()), align=4)
        splat = builder.insert_element(ir.Constant(vty, ir.Undefined), args[2], i32(0))
        splat = builder.shuffle_vector(splat, ir.Constant(vty, ir.Undefined),
                                       ir.Constant(vty, [0] * BUCKET))
        bits = builder.bitcast(builder.icmp_unsigned("==", lanes, splat), ir.IntType(BUCKET))
        return builder.zext(bits, ir.IntType(64))
    return types.uint64(types.Array(types.uint32, 1, "C"), types.uintp, types.uint32), codegen


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _scan(tags, base, tag):
    """Bit masks of the bucket's slots that hold `tag` and of its empty slots."""
    return _lanes_equal(tags, base, tag), _lanes_equal(tags, base, np.uint32(0))


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _popcount(x):
    x = x - ((x >> _U64(1)) & _U64(0x5555555555555555))
    x = (x & _U64(0x3333333333333333)) + ((x >> _U64(2)) & _U64(0x3333333333333333))
    x = (x + (x >> _U64(4))) & _U64(0x0F0F0F0F0F0F0F0F)
    return (x * _U64(0x0101010101010101)) >> _U64(56)


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _mix(h, v):
    h = (h ^ v) * _U64(0x9E3779B97F4A7C15)
    return h ^ (h >> _U64(29))


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _flow_hash(eni, attach, a_hi, a_lo, b_hi, b_lo, meta):
    """64-bit hash of a canonical key (murmur3's finaliser over a multiply-xor chain)."""
    h = _mix(_U64(0x2545F4914F6CDD1D), eni)
    h = _mix(h, attach)
    h = _mix(h, a_hi)
    h = _mix(h, a_lo)
    h = _mix(h, b_hi)
    h = _mix(h, b_lo)
    h = _mix(h, meta)
    h ^= h >> _U64(33)
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _canonical(s_hi, s_lo, sp, d_hi, d_lo, dp):
    """(sender is side b, both endpoints equal) for an endpoint pair."""
    if s_hi != d_hi:
        return s_hi > d_hi, False
    if s_lo != d_lo:
        return s_lo > d_lo, False
    return sp > dp, sp == dp


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _tcp_initial(tcpf):
    """(state, flags, initiator is the sender) of a TCP flow its first packet opens."""
    syn_ack_rst = tcpf & (TH_SYN | TH_ACK | TH_RST)
    if syn_ack_rst == TH_SYN:
        return SYN_SENT, 0, True
    if syn_ack_rst == TH_SYN | TH_ACK:
        return SYN_RCVD, F_MIDSTREAM, False
    return ESTABLISHED, F_MIDSTREAM, True


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _tcp_step(state, flags, tcpf, from_init):
    """(state, flags) after a segment: the table in the module docstring (the pure SYN
    on a CLOSED flow is handled by the caller, which starts a new flow)."""
    if tcpf & TH_RST:
        return CLOSED, flags | F_RST
    if tcpf & TH_SYN:
        if state == SYN_SENT and tcpf & TH_ACK and not from_init:
            return SYN_RCVD, flags
        return state, flags
    if tcpf & TH_ACK and state == SYN_RCVD and from_init:
        state = ESTABLISHED
    if tcpf & TH_FIN:
        side = F_FIN_INIT if from_init else F_FIN_RESP
        if state == ESTABLISHED:
            return FIN_WAIT, flags | side
        if state == FIN_WAIT and not flags & side:
            return CLOSED, flags | side
    return state, flags


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _idle_limit(proto, tcp_ns, other_ns):
    return tcp_ns if proto == PROTO_TCP else other_ns


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _victim(rows, b1, b2, now, tcp_ns, other_ns):
    """(slot, END_* class) of the slot to evict among the 32 of two full buckets."""
    best = -1
    best_cls = 99
    best_ts = np.int64(0)
    for k in range(2 * BUCKET):
        s = (b1 if k < BUCKET else b2) + np.uintp(k % BUCKET)
        r = rows[s]
        if now - r.last_ts > _idle_limit(r.proto, tcp_ns, other_ns):
            cls = END_TIMEOUT
        elif r.state == CLOSED:
            cls = END_EVICTED_CLOSED
        elif not r.flags & F_SEEN_REPLY:
            cls = END_EVICTED_EMBRYONIC
        else:
            cls = END_EVICTED_IDLE
        if cls < best_cls or (cls == best_cls and r.last_ts < best_ts):
            best = np.int64(s)
            best_cls = cls
            best_ts = r.last_ts
    return best, best_cls


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _emit(rows, s, recs, k, reason):
    """Copy the flow in slot s into record k, as it ends for `reason`."""
    r = rows[s]
    o = recs[np.uintp(k)]
    o.flow_id = r.flow_id
    o.eni = r.eni
    o.attach = r.attach
    o.ipver = r.ipver
    o.proto = r.proto
    o.state = r.state
    o.flags = r.flags & ~F_INIT_B
    o.reason = reason
    o.verdict = r.verdict
    if r.flags & F_INIT_B:
        o.src_hi, o.src_lo, o.sport = r.b_hi, r.b_lo, r.b_port
        o.dst_hi, o.dst_lo, o.dport = r.a_hi, r.a_lo, r.a_port
    else:
        o.src_hi, o.src_lo, o.sport = r.a_hi, r.a_lo, r.a_port
        o.dst_hi, o.dst_lo, o.dport = r.b_hi, r.b_lo, r.b_port
    o.first_ts = r.first_ts
    o.last_ts = r.last_ts
    o.pkts_toserver = r.pkts_toserver
    o.pkts_toclient = r.pkts_toclient
    o.bytes_toserver = r.bytes_toserver
    o.bytes_toclient = r.bytes_toclient
    o.cookie = r.cookie
    o.rule = r.rule


@njit(cache=True, nogil=True, _nrt=False)
def _prepare(n, verdict, pflags, eni, attach, ipver, proto, src_hi, src_lo, dst_hi, dst_lo,
             sport, dport, rel_proto, rel_src_hi, rel_src_lo, rel_dst_hi, rel_dst_lo, rel_sport,
             rel_dport, kind, hashes, k_a_hi, k_a_lo, k_b_hi, k_b_lo, k_meta):
    """First pass: what to do with each row, its canonical key and hash.  No table
    access, so the loop runs at arithmetic speed before the probe's random reads."""
    for j in range(n):
        i = np.uintp(j)
        pf = pflags[i]
        if verdict[i] == Verdict.DROP or (pf & PF_FRAGMENT and not pf & PF_REASSEMBLED):
            kind[i] = _K_SKIP
            continue
        if pf & PF_ICMP_ERROR:
            k = _K_ICMP_ERROR
            pr = rel_proto[i]
            s_hi, s_lo, sp = rel_src_hi[i], rel_src_lo[i], np.uint32(rel_sport[i])
            d_hi, d_lo, dp = rel_dst_hi[i], rel_dst_lo[i], np.uint32(rel_dport[i])
        else:
            k = _K_TRACK
            pr = proto[i]
            s_hi, s_lo, sp = src_hi[i], src_lo[i], np.uint32(sport[i])
            d_hi, d_lo, dp = dst_hi[i], dst_lo[i], np.uint32(dport[i])
        sender_b, same = _canonical(s_hi, s_lo, sp, d_hi, d_lo, dp)
        if sender_b:
            k |= _K_SENDER_B
            s_hi, s_lo, sp, d_hi, d_lo, dp = d_hi, d_lo, dp, s_hi, s_lo, sp
        if same:
            k |= _K_SAME
        meta = (_U64(sp) | (_U64(dp) << _U64(16)) | (_U64(pr) << _U64(32))
                | (_U64(ipver[i]) << _U64(40)))
        kind[i] = k
        k_a_hi[i] = s_hi
        k_a_lo[i] = s_lo
        k_b_hi[i] = d_hi
        k_b_lo[i] = d_lo
        k_meta[i] = meta
        hashes[i] = _flow_hash(eni[i], attach[i], s_hi, s_lo, d_hi, d_lo, meta)


@njit(cache=True, nogil=True, _nrt=False)
def _probe(n, bmask, tcp_ns, other_ns, kind, hashes, k_a_hi, k_a_lo, k_b_hi, k_b_lo, k_meta,
           eni, attach, tcp_flags, ip_len, ts_ns, cookie, flow, flow_id, dir_, est_,
           rows, rows64, tags, counters, clock, recs, nrec, end_counter):
    """Second pass: find or place each row's flow, update it.  Returns the number of
    records now in `recs` (each row ends at most one flow; the caller leaves room)."""
    for j in range(n):
        # Software pipeline (VPP style): fetch the tag lines of row j+2D, and the row of
        # row j+D whose tag lines arrived by now, so that the cache misses overlap.
        if j + 2 * _AHEAD < n:
            _, f1, f2 = _buckets(hashes[np.uintp(j + 2 * _AHEAD)], bmask)
            _prefetch(tags, f1)
            _prefetch(tags, f2)
        if j + _AHEAD < n:
            ft, f1, f2 = _buckets(hashes[np.uintp(j + _AHEAD)], bmask)
            m, e1 = _scan(tags, f1, ft)
            base = f1
            if m == 0:
                m, e2 = _scan(tags, f2, ft)
                base = f2
                if m == 0 and e1 == 0 and e2 == 0:  # an eviction: its candidates
                    for q in range(BUCKET):
                        _prefetch(rows64, (f1 + np.uintp(q)) * np.uintp(_ROW_WORDS))
                        _prefetch(rows64, (f2 + np.uintp(q)) * np.uintp(_ROW_WORDS))
            if m:
                s = (base + np.uintp(trailing_zeros(m))) * np.uintp(_ROW_WORDS)
                _prefetch(rows64, s)
                _prefetch(rows64, s + np.uintp(8))
        i = np.uintp(j)
        ts = ts_ns[i]
        if ts > clock[1]:
            clock[1] = ts
        k = kind[i]
        est_[i] = 0
        if k == _K_SKIP:
            flow[i] = -1
            flow_id[i] = 0
            dir_[i] = 0
            continue
        tag, b1, b2 = _buckets(hashes[i], bmask)
        a_hi, a_lo, b_hi, b_lo, meta = k_a_hi[i], k_a_lo[i], k_b_hi[i], k_b_lo[i], k_meta[i]
        a_port = np.uint16(meta & _U64(0xFFFF))
        b_port = np.uint16((meta >> _U64(16)) & _U64(0xFFFF))
        proto = np.uint8((meta >> _U64(32)) & _U64(0xFF))
        ipver = np.uint8(meta >> _U64(40))
        e, at = eni[i], attach[i]
        found = -1
        m, empty1 = _scan(tags, b1, tag)
        bucket = b1
        empty2 = _U64(0)
        for half in range(2):
            while m:
                s = bucket + np.uintp(trailing_zeros(m))
                r = rows[s]
                if (r.a_lo == a_lo and r.b_lo == b_lo and r.a_hi == a_hi and r.b_hi == b_hi
                        and r.eni == e and r.attach == at and r.a_port == a_port
                        and r.b_port == b_port and r.proto == proto and r.ipver == ipver):
                    found = np.int64(s)
                    break
                m &= m - _U64(1)
            if found >= 0 or half:
                break
            m, empty2 = _scan(tags, b2, tag)
            bucket = b2
        sender_b = (k & _K_SENDER_B) != 0
        same = (k & _K_SAME) != 0
        if k & _K_ICMP_ERROR:
            r = rows[np.uintp(max(found, 0))]
            if found >= 0 and ts - r.last_ts <= _idle_limit(proto, tcp_ns, other_ns):
                quoted_from_init = same or sender_b == ((r.flags & F_INIT_B) != 0)
                flow[i] = found
                flow_id[i] = r.flow_id
                dir_[i] = 1 if quoted_from_init else 0
                counters[C_ICMP_RELATED] += 1
            else:
                flow[i] = -1
                flow_id[i] = 0
                dir_[i] = 0
                counters[C_ICMP_UNRELATED] += 1
            continue
        tcpf = tcp_flags[i]
        end = 0
        if found >= 0:
            s = np.uintp(found)
            r = rows[s]
            if ts - r.last_ts > _idle_limit(proto, tcp_ns, other_ns):
                end = END_TIMEOUT
            elif (proto == PROTO_TCP and r.state == CLOSED
                  and tcpf & (TH_SYN | TH_ACK | TH_RST) == TH_SYN):
                end = END_REUSED
            new = end != 0
        else:
            new = True
            if empty1 and _popcount(empty1) >= _popcount(empty2):
                s = b1 + np.uintp(trailing_zeros(empty1))
            elif empty2:
                s = b2 + np.uintp(trailing_zeros(empty2))
            else:
                v, end = _victim(rows, b1, b2, ts, tcp_ns, other_ns)
                s = np.uintp(v)
            r = rows[s]
        if end:
            _emit(rows, s, recs, nrec, end)
            nrec += 1
            counters[end_counter[end]] += 1
            counters[C_ACTIVE] -= 1
        if new:
            tags[s] = tag
            r.eni, r.attach, r.a_hi, r.a_lo, r.b_hi, r.b_lo = e, at, a_hi, a_lo, b_hi, b_lo
            r.a_port, r.b_port, r.proto, r.ipver = a_port, b_port, proto, ipver
            if proto == PROTO_TCP:
                st, fl, init_is_sender = _tcp_initial(tcpf)
            else:
                st, fl, init_is_sender = NONE, 0, True
            if sender_b == init_is_sender:
                fl |= F_INIT_B
            r.state = st
            r.flags = fl
            r.first_ts = ts
            r.last_ts = ts
            r.pkts_toserver = 0
            r.pkts_toclient = 0
            r.bytes_toserver = 0
            r.bytes_toclient = 0
            fid = clock[0]
            clock[0] = fid + 1
            r.flow_id = fid
            r.cookie = cookie[i]
            r.rule = -1
            r.verdict = Verdict.PENDING
            counters[C_CREATED] += 1
            counters[C_ACTIVE] += 1
            if fl & F_MIDSTREAM:
                counters[C_MIDSTREAM] += 1
        fl = r.flags
        from_init = same or sender_b == ((fl & F_INIT_B) != 0)
        nbytes = _U64(ip_len[i])
        if from_init:
            r.pkts_toserver += _U64(1)
            r.bytes_toserver += nbytes
        else:
            r.pkts_toclient += _U64(1)
            r.bytes_toclient += nbytes
            fl |= F_SEEN_REPLY
        if proto == PROTO_TCP:
            # Suricata's flow:established: the handshake's last ACK is not yet established
            est_[i] = r.state >= ESTABLISHED
            st, fl = _tcp_step(r.state, fl, tcpf, from_init)
            r.state = st
        else:  # ... while a UDP reply already is
            est_[i] = (fl & F_SEEN_REPLY) != 0
        r.flags = fl
        if ts > r.last_ts:
            r.last_ts = ts
        flow[i] = np.int64(s)
        flow_id[i] = r.flow_id
        dir_[i] = 0 if from_init else 1
    return nrec


@njit(cache=True, nogil=True, _nrt=False)
def _flush(rows, tags, start, now, tcp_ns, other_ns, counters, recs, end_counter):
    """End flows from slot `start` on until `recs` is full: reason timeout for those
    idle past their timeout at `now`, shutdown for the others.  Returns (next slot,
    records written)."""
    k = 0
    s = start
    cap = tags.shape[0]
    while s < cap and k < recs.shape[0]:
        u = np.uintp(s)
        if tags[u]:
            r = rows[u]
            end = END_SHUTDOWN
            if now - r.last_ts > _idle_limit(r.proto, tcp_ns, other_ns):
                end = END_TIMEOUT
            _emit(rows, u, recs, k, end)
            k += 1
            counters[end_counter[end]] += 1
            counters[C_ACTIVE] -= 1
            tags[u] = 0
        s += 1
    return s, k


# --- the table -------------------------------------------------------------------------

class FlowTable:
    """A fixed-size flow table.  `track(batch)` fills the batch's flow columns and
    updates the flows; ended flows wait in a record buffer for `drain_records()`.

    Later stages read and write the flow's cached decision in `slots["verdict"]` /
    `slots["rule"]` (or `slots[s].verdict` in a kernel) at the row's `flow` slot.
    """

    def __init__(self, config: FlowConfig | None = None) -> None:
        self.config = config or FlowConfig()
        cap = self.config.capacity
        self.slots = tables.zeros(cap, SLOT_DTYPE)
        self.tags = np.zeros(cap, np.uint32)
        self._rows64 = self.slots.view(np.uint64)  # the rows as words, for prefetching
        self._bmask = np.uint64(cap // BUCKET - 1)
        self._tcp_ns = np.int64(round(self.config.tcp_idle_s * 1e9))
        self._other_ns = np.int64(round(self.config.other_idle_s * 1e9))
        self._counters = np.zeros(len(COUNTER_NAMES), np.int64)
        self._clock = np.array([1, np.iinfo(np.int64).min], np.int64)  # next flow_id, latest ts
        self._records = np.zeros(0, RECORD_DTYPE)
        self._nrec = 0
        self._scratch_n = -1
        self._ensure_scratch(0)

    bytes_per_slot: int = SLOT_DTYPE.itemsize + 4

    @property
    def nbytes(self) -> int:
        """Bytes of the table proper (rows and tags), fixed at construction."""
        return self.slots.nbytes + self.tags.nbytes

    def _ensure_scratch(self, n: int) -> None:
        # per-batch scratch, grown to the largest batch seen (never per packet)
        if n <= self._scratch_n:
            return
        self._scratch_n = n
        self._kind = np.zeros(n, np.uint8)
        self._hashes = np.zeros(n, np.uint64)
        self._key = np.zeros((5, n), np.uint64)

    def track(self, batch: PacketBatch) -> None:
        """Assign every row of the batch to its flow and update the flows."""
        n = batch.n
        self._ensure_scratch(n)
        if self._records.shape[0] - self._nrec < n:
            grown = np.zeros(self._nrec + max(n, 4096), RECORD_DTYPE)
            grown[:self._nrec] = self._records[:self._nrec]
            self._records = grown
        b = batch
        key = self._key
        _prepare(n, b.verdict, b.pflags, b.gwlb_eni, b.gwlb_attach, b.ipver, b.proto, b.src_hi,
                 b.src_lo, b.dst_hi, b.dst_lo, b.sport, b.dport, b.rel_proto, b.rel_src_hi,
                 b.rel_src_lo, b.rel_dst_hi, b.rel_dst_lo, b.rel_sport, b.rel_dport,
                 self._kind, self._hashes, key[0], key[1], key[2], key[3], key[4])
        self._nrec = _probe(n, self._bmask, self._tcp_ns, self._other_ns, self._kind,
                            self._hashes, key[0], key[1], key[2], key[3], key[4], b.gwlb_eni,
                            b.gwlb_attach, b.tcp_flags, b.ip_len, b.ts_ns, b.gwlb_cookie,
                            b.flow, b.flow_id, b.dir, b.est, self.slots, self._rows64, self.tags,
                            self._counters, self._clock, self._records, self._nrec,
                            _END_COUNTER)

    def drain_records(self) -> np.ndarray:
        """Records (RECORD_DTYPE) of the flows that ended since the last call: a view,
        valid until the next `track()` (copy it to keep it).  Drain after every batch:
        the buffer holds one batch's worth (each row ends at most one flow) and grows
        only if records are left waiting."""
        out = self._records[:self._nrec]
        self._nrec = 0
        return out

    def flush(self, now_ns: int | None = None, chunk: int = 65536) -> Iterator[np.ndarray]:
        """End every flow (end of run), yielding records in chunks of at most `chunk`.

        Flows idle past their timeout at `now_ns` (default: the latest packet seen)
        end with reason timeout, the others with reason shutdown; the table is then
        empty.  Records still waiting for `drain_records()` come first.
        """
        pending = self.drain_records()
        if pending.size:
            yield pending
        now = self._clock[1] if now_ns is None else np.int64(now_ns)
        buf = np.zeros(max(1, min(chunk, int(self._counters[C_ACTIVE]))), RECORD_DTYPE)
        s = 0
        while s < self.tags.shape[0]:
            s, k = _flush(self.slots, self.tags, s, now, self._tcp_ns, self._other_ns,
                          self._counters, buf, _END_COUNTER)
            if k:
                yield buf[:k].copy()

    def counters(self) -> dict[str, int]:
        return {name: int(v) for name, v in zip(COUNTER_NAMES, self._counters)}
