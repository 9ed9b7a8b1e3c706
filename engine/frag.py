"""Stage 2b: bounded reassembly of inner IPv4 and IPv6 fragments, for inspection.

Fragments are returned to GWLB as they came; reassembly only lets later stages see
the whole datagram, so that a name split across fragments is not missed.  The
fragment that completes a datagram carries it: its row's `ip`/`ip_len` point at the
reassembled datagram (PF_REASSEMBLED) and engine.parse parses it again, and its
verdict is the datagram's (dropping it keeps the datagram from being rebuilt by the
receiver).

Bounds: a fixed number of datagrams in flight, each in a slab of at most 65,535
payload bytes, a fragment count and an age limit per datagram.  The slabs are part of
the batch buffer (after the capture bytes), so a reassembled datagram is addressed
like any packet.  Overlaps are resolved first-wins at 8-byte granularity (a rewrite
of bytes already received is ignored) and counted: overlapping fragments are an
evasion technique, not something a real sender does.

Failures close rather than open, because every fragment that passes uninspected is
one the receiver may still use: with no room for another datagram, its fragments are
dropped (nothing is evicted to make room); a datagram that breaks the rules (too many
fragments, ends that disagree, data past its end) is poisoned and every later fragment
of it is dropped until it times out.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numba import njit

from egressd.engine.batch import PacketBatch
from egressd.engine.parse import (EXT_FRAGMENT, MAX_EXT_HEADERS, PF_FRAGMENT, PF_MORE_FRAGMENTS,
                                  PF_REASSEMBLED, ext_header_len)
from egressd.engine.reasons import N_REASONS, Reason, Verdict
from egressd.engine.wire import copy, ones_sum, u8

HDR_ROOM = 512               # IPv4 header or IPv6 unfragmentable part, at most
MAX_PAYLOAD = 65535
SLAB = HDR_ROOM + MAX_PAYLOAD + 1
_BLOCKS = (MAX_PAYLOAD + 7) // 8


class FragMode(IntEnum):
    """What to do with fragments: AWS Network Firewall's stateless default action for
    fragmented packets (aws:forward_to_sfe / aws:pass / aws:drop)."""

    REASSEMBLE = 0   # inspect the reassembled datagram (forward to the stateful engine)
    PASS = 1         # forward fragments uninspected
    DROP = 2


# context states
_FREE, _OPEN, _DONE, _POISONED = 0, 1, 2, 3
# counter slots
C_REASSEMBLED, C_OVERLAPS, C_TIMED_OUT, C_POISONED = range(4)
COUNTER_NAMES = ("reassembled", "overlaps", "timed_out", "poisoned")


@dataclass(frozen=True)
class FragConfig:
    max_datagrams: int = 256
    max_fragments: int = 64
    timeout_s: float = 30.0
    mode: FragMode = FragMode.REASSEMBLE

    def __post_init__(self) -> None:
        if not 1 <= self.max_datagrams <= 65536:
            raise ValueError("max_datagrams must be between 1 and 65536")
        if not 2 <= self.max_fragments <= _BLOCKS:
            raise ValueError(f"max_fragments must be between 2 and {_BLOCKS}")
        if self.timeout_s <= 0:
            raise ValueError("fragment timeout must be positive")

    @property
    def pool_bytes(self) -> int:
        """Bytes of batch buffer the slabs need."""
        return self.max_datagrams * SLAB


@njit(cache=True, nogil=True, _nrt=False)
def _v6_frag_header(buf, p):
    """Offset (from p) of the IPv6 fragment header and of the next-header field that
    names it; parse has already walked and bounded this chain."""
    nh = u8(buf, p + 6)
    field = 6
    q = 40
    for _ in range(MAX_EXT_HEADERS):
        if nh == EXT_FRAGMENT:
            return q, field
        field = q
        hlen = ext_header_len(buf, p + q, nh)
        nh = u8(buf, p + q)
        q += hlen
    return -1, 0


@njit(cache=True, nogil=True, _nrt=False)
def _reassemble(buf, base, n, mode, max_frags, timeout_ns, verdict, reason, counts, pflags, ipver,
                proto, src_hi, src_lo, dst_hi, dst_lo, frag_id, frag_off, ip, ip_len, ts_ns, eni,
                attach, c_state, c_key, c_ident, c_first_ts, c_total, c_maxend, c_hdrlen, c_field,
                c_nexthdr, c_nfrags, c_covered, c_poison, cover, fcounts):
    n_ctx = c_state.shape[0]
    for k in range(n_ctx):  # datagrams completed in the previous batch are done with
        if c_state[k] == _DONE:
            c_state[k] = _FREE
    for i in range(n):
        if verdict[i] == Verdict.DROP or not pflags[i] & PF_FRAGMENT:
            continue
        if mode == FragMode.DROP:
            verdict[i] = Verdict.DROP
            reason[i] = Reason.FRAG_POLICY_DROP
            counts[Reason.FRAG_POLICY_DROP] += 1
            continue
        if mode == FragMode.PASS:
            continue
        now = ts_ns[i]
        # IPv6 keys on addresses and id only (RFC 8200 4.5): later fragments name the
        # fragment header's next header, not the transport of the first
        kind = np.uint64(ipver[i]) << np.uint64(8)
        if ipver[i] == 4:
            kind |= np.uint64(proto[i])
        # find this datagram's context; expire old ones on the way (the table is small
        # and fragments are rare, so a scan is cheaper than a second hash table)
        k = -1
        free = -1
        for j in range(n_ctx):
            if (c_state[j] == _OPEN or c_state[j] == _POISONED) and now - c_first_ts[j] > timeout_ns:
                if c_state[j] == _OPEN:
                    fcounts[C_TIMED_OUT] += 1
                c_state[j] = _FREE
            if c_state[j] == _FREE:
                if free < 0:
                    free = j
                continue
            # A completed datagram's slab stays in use until the batch ends, but its key
            # is free: receivers start over once they reassemble, so a fragment reusing
            # the identification begins a new datagram (and a late duplicate, one that
            # never completes).
            if c_state[j] == _DONE:
                continue
            if (c_ident[j] == frag_id[i] and c_key[j, 0] == eni[i] and c_key[j, 1] == attach[i]
                    and c_key[j, 2] == src_hi[i] and c_key[j, 3] == src_lo[i]
                    and c_key[j, 4] == dst_hi[i] and c_key[j, 5] == dst_lo[i] and c_key[j, 6] == kind):
                k = j
                break
        if k >= 0 and c_state[k] == _POISONED:
            verdict[i] = Verdict.DROP
            reason[i] = c_poison[k]
            counts[c_poison[k]] += 1
            continue
        r = Reason.OK
        if k < 0 and free < 0:
            verdict[i] = Verdict.DROP
            reason[i] = Reason.FRAG_TABLE_FULL
            counts[Reason.FRAG_TABLE_FULL] += 1
            continue
        if k < 0:
            k = free
            c_state[k] = _OPEN
            c_key[k, 0] = eni[i]
            c_key[k, 1] = attach[i]
            c_key[k, 2] = src_hi[i]
            c_key[k, 3] = src_lo[i]
            c_key[k, 4] = dst_hi[i]
            c_key[k, 5] = dst_lo[i]
            c_key[k, 6] = kind
            c_ident[k] = frag_id[i]
            c_first_ts[k] = now
            c_total[k] = -1
            c_maxend[k] = 0
            c_hdrlen[k] = 0
            c_nfrags[k] = 0
            c_covered[k] = 0
            cover[k, :] = 0
        p = ip[i]
        if ipver[i] == 4:
            hdr = np.int64(u8(buf, p) & 0x0F) * 4
            data = hdr
            field = 0
            nexthdr = 0
        else:
            fh, field = _v6_frag_header(buf, p)
            hdr = fh
            data = fh + 8
            nexthdr = u8(buf, p + fh)
        dlen = np.int64(ip_len[i]) - data
        off = np.int64(frag_off[i])
        end = off + dlen
        more = pflags[i] & PF_MORE_FRAGMENTS
        if hdr < 0 or hdr > HDR_ROOM:  # this fragment only: the receiver may rebuild without it
            verdict[i] = Verdict.DROP
            reason[i] = Reason.FRAG_HEADER_TOO_LONG
            counts[Reason.FRAG_HEADER_TOO_LONG] += 1
            continue
        if c_nfrags[k] >= max_frags:
            r = Reason.FRAG_TOO_MANY
        elif c_total[k] >= 0 and (end > c_total[k] or (not more and end != c_total[k])):
            r = Reason.FRAG_INCONSISTENT
        elif not more and c_maxend[k] > end:  # data already seen past this end
            r = Reason.FRAG_INCONSISTENT
        if r != Reason.OK:
            verdict[i] = Verdict.DROP
            reason[i] = r
            counts[r] += 1
            c_state[k] = _POISONED
            c_poison[k] = r
            fcounts[C_POISONED] += 1
            continue
        c_nfrags[k] += 1
        c_maxend[k] = max(c_maxend[k], end)
        if not more:
            c_total[k] = end
        slab = base + np.int64(k) * SLAB
        overlap = False
        for blk in range(off // 8, (end + 7) // 8):
            if cover[k, blk]:
                overlap = True
                continue
            cover[k, blk] = 1
            c_covered[k] += 1
            lo = blk * 8
            copy(buf, slab + HDR_ROOM + lo, buf, p + data + lo - off, min(lo + 8, end) - lo)
        if overlap:
            fcounts[C_OVERLAPS] += 1
        if off == 0 and c_hdrlen[k] == 0:
            copy(buf, slab + HDR_ROOM - hdr, buf, p, hdr)
            c_hdrlen[k] = hdr
            c_field[k] = field
            c_nexthdr[k] = nexthdr
        if c_total[k] < 0 or c_hdrlen[k] == 0 or c_covered[k] != (c_total[k] + 7) // 8:
            continue
        # complete: fix up the header so the datagram parses as one packet
        h = slab + HDR_ROOM - c_hdrlen[k]
        length = c_hdrlen[k] + c_total[k]
        if length - (40 if ipver[i] == 6 else 0) > MAX_PAYLOAD:
            verdict[i] = Verdict.DROP
            reason[i] = Reason.FRAG_BAD_OFFSET
            counts[Reason.FRAG_BAD_OFFSET] += 1
            c_state[k] = _FREE
            continue
        if ipver[i] == 4:
            buf[h + 2] = length >> 8
            buf[h + 3] = length & 0xFF
            buf[h + 6] = u8(buf, h + 6) & 0x40  # keep DF; clear MF and the offset
            buf[h + 7] = 0
            buf[h + 10] = 0
            buf[h + 11] = 0
            csum = ~ones_sum(buf, h, c_hdrlen[k]) & 0xFFFF
            buf[h + 10] = csum >> 8
            buf[h + 11] = csum & 0xFF
        else:
            # drop the fragment header: the unfragmentable part is followed by the data
            plen = length - 40
            buf[h + 4] = plen >> 8
            buf[h + 5] = plen & 0xFF
            buf[h + c_field[k]] = c_nexthdr[k]
        ip[i] = h
        ip_len[i] = length
        pflags[i] |= PF_REASSEMBLED
        c_state[k] = _DONE
        fcounts[C_REASSEMBLED] += 1


class FragTable:
    """Datagrams being reassembled; its slabs live in `buf[base:base+pool_bytes]` of
    every batch handed to `reassemble` (the reader reserves that tail)."""

    def __init__(self, config: FragConfig | None = None) -> None:
        self.config = config or FragConfig()
        m = self.config.max_datagrams
        self.state = np.zeros(m, np.uint8)
        self.key = np.zeros((m, 7), np.uint64)
        self.ident = np.zeros(m, np.uint32)
        self.first_ts = np.zeros(m, np.int64)
        self.total = np.zeros(m, np.int64)
        self.maxend = np.zeros(m, np.int64)
        self.poison = np.zeros(m, np.uint16)
        self.hdrlen = np.zeros(m, np.int64)
        self.field = np.zeros(m, np.int64)
        self.nexthdr = np.zeros(m, np.uint8)
        self.nfrags = np.zeros(m, np.int32)
        self.covered = np.zeros(m, np.int64)
        self.cover = np.zeros((m, _BLOCKS), np.uint8)
        self.fcounts = np.zeros(len(COUNTER_NAMES), np.uint64)

    def reassemble(self, b: PacketBatch, base: int, counts: np.ndarray) -> None:
        """Feed the batch's fragments; rows that complete a datagram get PF_REASSEMBLED."""
        if counts.shape != (N_REASONS,) or counts.dtype != np.uint64:
            raise ValueError(f"counts must be uint64[{N_REASONS}]")
        if base < 0 or base + self.config.pool_bytes > len(b.buf):
            raise ValueError("batch buffer has no room for the fragment slabs")
        c = self.config
        _reassemble(b.buf, base, b.n, int(c.mode), c.max_fragments, int(c.timeout_s * 1e9),
                    b.verdict, b.reason, counts, b.pflags, b.ipver, b.proto, b.src_hi, b.src_lo,
                    b.dst_hi, b.dst_lo, b.frag_id, b.frag_off, b.ip, b.ip_len, b.ts_ns, b.gwlb_eni,
                    b.gwlb_attach, self.state, self.key, self.ident, self.first_ts, self.total,
                    self.maxend, self.hdrlen, self.field, self.nexthdr, self.nfrags, self.covered,
                    self.poison, self.cover, self.fcounts)

    def counters(self) -> dict[str, int]:
        return {name: int(v) for name, v in zip(COUNTER_NAMES, self.fcounts)}
