"""Stage 4: the name each flow asks for (TLS SNI, HTTP Host, DNS query, QUIC SNI).

Per flow slot (validated by flow_id, since slots are reused) the stage keeps where
the client's byte stream starts and how far the search got.  A TCP client's first
bytes are parsed straight from the packet when they hold a whole ClientHello or
request (the common case, no copy); otherwise they are reassembled by sequence
number into a buffer from a fixed pool: bounded (MAX_STREAM bytes, MAX_SEGMENTS
segments, MAX_HOLES disjoint pieces), out-of-order and retransmitted segments
handled, overlapping bytes first-wins (the rewrite is ignored and counted, an
evasion signal).  DNS is parsed per packet (every query has its own name): UDP and
TCP port 53, and with `dns_any_port` any UDP payload that parses as DNS (mDNS, DNS
on odd ports; off by default, since any UDP payload may happen to parse).  QUIC
Initials are decrypted in Python (engine.quic), for the few rows the kernel lists:
client datagrams to UDP 443 of flows still without a name.

Names are normalized (ASCII lower case, one trailing dot removed; IDNA stays as the
bytes on the wire) and stored once in the names arena, a bounded ring: a name id
stays readable until the ring wraps over it.  The row that completes a name gets its
id in `name_id` (-1 elsewhere); the flow keeps it for the logs.  DNS answers (A and
AAAA of the query name and its CNAMEs) are listed per batch for the policy stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from egressd.engine import dns, http, tables, tls
from egressd.engine.batch import PacketBatch
from egressd.engine.flows import TH_SYN
from egressd.engine.parse import PROTO_TCP, PROTO_UDP
from egressd.engine import quic
from egressd.engine.quic import QuicInitials
from egressd.engine.reasons import Verdict
from egressd.engine.wire import copy, u8, u16

APP_NONE, APP_TLS, APP_HTTP, APP_DNS, APP_QUIC = range(5)
APP_NAMES = ("", "tls", "http", "dns", "quic")

# per-flow search state, and which message the search expects
_NEW, _DONE = 0, 1
_FIRST, _TUNNEL, _SECOND_HELLO = 0, 1, 2

# l7_flags (rows and flows)
L7_OVERLAP = 0x01        # a segment rewrote bytes already received (first-wins)
L7_GAVE_UP = 0x02        # limits reached before the name was complete
L7_MALFORMED = 0x04      # the parser refused the client's bytes
L7_MULTI_RECORD = 0x08   # ClientHello spread over several TLS records
L7_SNI_MULTIPLE = 0x10
L7_ECH = 0x20            # Encrypted Client Hello offered
L7_MIDSTREAM = 0x40      # the stream's start was not seen (no SYN)
L7_SNI_CHANGED = 0x80    # a second ClientHello named another server than the first
# row only: where the row left the flow's search (the policy stage judges each row by
# what was known at that row, not by the state at the end of the batch)
L7_SEARCH_MORE = 0x100   # client bytes of a message still incomplete after this row
L7_SEARCH_END = 0x200    # the search ended at this row (a name, or none to be had)

MAX_STREAM = tls.MAX_CLIENT_HELLO + 5 * 1024  # a ClientHello in up to 1024 records
MAX_SEGMENTS = 32
MAX_HOLES = 8
DNS_PORT = 53
QUIC_PORT = 443

# counters
(C_TLS, C_HTTP, C_DNS, C_QUIC, C_NO_NAME, C_MALFORMED, C_GAVE_UP, C_POOL_EMPTY, C_OVERLAPS,
 C_REASSEMBLED, C_ANSWERS_DROPPED, C_QUIC_UNREAD) = range(12)
COUNTER_NAMES = ("tls_names", "http_names", "dns_names", "quic_names", "no_name", "malformed",
                 "gave_up", "pool_exhausted", "overlaps", "reassembled", "dns_answers_dropped",
                 "quic_initials_not_decrypted")


@dataclass(frozen=True)
class L7Config:
    buffers: int = 1024               # streams reassembled at once (MAX_STREAM bytes each)
    arena_bytes: int = 16 << 20       # names kept for the logs
    arena_names: int = 1 << 20
    quic_flows: int = 4096            # QUIC flows decrypting their Initials at once
    dns_any_port: bool = False        # also read UDP payloads off port 53 that parse as DNS

    def __post_init__(self) -> None:
        for name in ("buffers", "arena_bytes", "arena_names", "quic_flows"):  # dns_any_port: any
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.arena_bytes < 4 * tls.SNI_MAX:
            raise ValueError("arena_bytes too small to hold names")


# --- names arena --------------------------------------------------------------------------

@njit(cache=True, nogil=True, _nrt=False)
def _arena_add(arena, ent_off, ent_len, st, src, so, length, fold=True):
    """Store src[so:so+length], normalized as a name if `fold`; return its id.
    st = [next id, absolute write position]: positions count up forever and the ring
    byte is position % size, so a name is intact while the writer is less than one
    lap past its start."""
    if fold and length > 0 and src[np.uintp(so + length - 1)] == 0x2E:  # one trailing dot
        length -= 1
    size = arena.shape[0]
    w = st[1]
    if w % size + length > size:  # a name never wraps: start the next lap
        w += size - w % size
    r = w % size
    for k in range(length):
        c = src[np.uintp(so + k)]
        if fold and 0x41 <= c <= 0x5A:
            c += 0x20
        arena[np.uintp(r + k)] = c
    nid = st[0]
    cap = ent_off.shape[0]
    ent_off[nid % cap] = w
    ent_len[nid % cap] = length
    st[0] = nid + 1
    st[1] = w + length
    return nid


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _arena_valid(arena, ent_off, st, nid):
    """The name nid is still in the arena: its entry not reused, its bytes not written over."""
    return st[0] - ent_off.shape[0] <= nid < st[0] and ent_off[nid % ent_off.shape[0]] >= st[1] - arena.shape[0]


class NamesArena:
    """Normalized names by id, in a bounded ring."""

    def __init__(self, nbytes: int, names: int) -> None:
        self.bytes = np.zeros(nbytes, np.uint8)
        self.off = np.zeros(names, np.int64)   # absolute position of each name
        self.len = np.zeros(names, np.int64)
        self.state = np.zeros(2, np.int64)     # next id, absolute write position

    def get(self, name_id: int) -> bytes | None:
        """The name, or None if the id is unknown or the ring has gone over it."""
        if not _arena_valid(self.bytes, self.off, self.state, name_id):
            return None
        k = name_id % len(self.off)
        start = int(self.off[k]) % len(self.bytes)
        return self.bytes[start:start + int(self.len[k])].tobytes()

    def add(self, name: bytes) -> int:
        src = np.frombuffer(name, np.uint8)
        return int(_arena_add(self.bytes, self.off, self.len, self.state, src, 0, len(src)))


# --- the kernel ---------------------------------------------------------------------------

@njit(cache=True, nogil=True, _nrt=False)
def _insert(pool, b, iv_s, iv_e, src, sp, off, length):
    """Put segment bytes src[sp:sp+length] at stream offset `off` of buffer b where no
    byte is yet (first wins).  Returns (overlapped, ok); not ok when the buffer would
    need more than MAX_HOLES pieces."""
    end = min(off + length, MAX_STREAM)
    if off >= end:
        return False, True
    overlapped = False
    # copy the parts of [off, end) not covered by a piece
    cur = off
    while cur < end:
        nxt = end
        covered_to = -1
        for k in range(MAX_HOLES):
            if iv_e[b, k] <= iv_s[b, k]:
                continue
            if iv_s[b, k] <= cur < iv_e[b, k]:
                covered_to = iv_e[b, k]
            elif cur < iv_s[b, k] < nxt:
                nxt = iv_s[b, k]
        if covered_to >= 0:
            stop = min(covered_to, end)
            row = pool[b]
            for x in range(cur, stop):  # a retransmission repeats the bytes: no overlap
                if row[x] != src[sp + (x - off)]:
                    overlapped = True
                    break
            cur = stop
            continue
        copy(pool[b], cur, src, sp + (cur - off), nxt - cur)
        cur = nxt
    # record [off, end) and merge touching pieces
    s0, e0 = off, end
    for _ in range(MAX_HOLES):
        merged = False
        for k in range(MAX_HOLES):
            if iv_e[b, k] > iv_s[b, k] and iv_s[b, k] <= e0 and s0 <= iv_e[b, k]:
                s0 = min(s0, iv_s[b, k])
                e0 = max(e0, iv_e[b, k])
                iv_s[b, k] = 0
                iv_e[b, k] = 0
                merged = True
        if not merged:
            break
    for k in range(MAX_HOLES):
        if iv_e[b, k] <= iv_s[b, k]:
            iv_s[b, k] = s0
            iv_e[b, k] = e0
            return overlapped, True
    return overlapped, False


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _prefix(iv_s, iv_e, b):
    for k in range(MAX_HOLES):
        if iv_s[b, k] == 0 and iv_e[b, k] > 0:
            return iv_e[b, k]
    return 0


@njit(cache=True, nogil=True, _nrt=False)
def _parse_stream(buf, p, n, app, scratch, name, alpn, a_hi, a_lo, a_ttl, a_chain):
    """Run the parser for `app` (or guess it) over a client stream.

    Returns (app, status, used, name_len, flags, connect, alpn_len, version): version is
    the TLS version offered, or for DNS the query type;
    status is the parser's, in the common numbering OK / NEED_MORE / not this protocol
    / MALFORMED; on OK, `used` is how many stream bytes the message took; connect: an
    HTTP CONNECT request.
    """
    if app == APP_NONE or app == APP_TLS:
        st, used, nl, al, ver, fl = tls.client_hello(buf, p, n, True, scratch, name, 0, alpn, 0)
        if st != tls.NOT_TLS or app == APP_TLS:
            f = 0
            if fl & tls.F_MULTI_RECORD:
                f |= L7_MULTI_RECORD
            if fl & tls.F_SNI_MULTIPLE:
                f |= L7_SNI_MULTIPLE
            if fl & tls.F_ECH:
                f |= L7_ECH
            return APP_TLS, st, used, nl, f, False, al, ver
    if app == APP_NONE or app == APP_HTTP:
        st, used, nl, method, _fl = http.request(buf, p, n, name, 0)
        if st != http.NOT_HTTP or app == APP_HTTP:
            return APP_HTTP, st, used, nl, 0, st == http.OK and method == http.M_CONNECT, 0, 0
    if app == APP_DNS:
        st, nl, qt, _rc, _na, _fl, _tx = dns.tcp_message(buf, p, n, name, 0, a_hi, a_lo, a_ttl, 0, a_chain)
        return APP_DNS, st, 0, nl, 0, False, 0, qt
    return APP_NONE, 2, 0, 0, 0, False, 0, 0


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _ccs(buf, p, n):
    """Bytes of ChangeCipherSpec records at buf[p:p+n] (TLS 1.3 middlebox
    compatibility sends one before the second ClientHello); -1: cannot tell yet."""
    k = 0
    for _ in range(2):
        if n - k < 1 or u8(buf, p + k) != 20:
            return k
        if n - k < 6:
            return -1
        k += 5 + np.int64(u16(buf, p + k + 3))
    return k


@njit(cache=True, nogil=True, _nrt=False)
def _advance(src, p, avail, i, s, app_hint, scratch, name, alpn, a_hi, a_lo, a_ttl, a_chain, arena, ent_off,
             ent_len, ast, app_col, name_col, flags_col, qtype_col, f_state, f_stage, f_app, f_name, f_base,
             f_flags, f_ver, f_alpn, counters):
    """Search the client stream bytes src[p:p+avail] (from the flow's base) for names.

    A stream can hold up to three: an HTTP CONNECT request, the ClientHello tunnelled
    after it, and a second ClientHello (after a HelloRetryRequest; a name different
    from the first is flagged).  The client's next flight need not be a ClientHello
    (a TLS 1.2 resumption sends an encrypted Finished in a handshake record), so what
    follows the first ClientHello ends the search quietly unless it parses as one.  Returns (bytes used, done); not done means the rest,
    from the new base, is still incomplete.
    """
    used = 0
    for _ in range(3):
        q = p + used
        left = avail - used
        stage = f_stage[s]
        want = app_hint if stage == _FIRST else APP_TLS
        if stage == _SECOND_HELLO:
            k = _ccs(src, q, left)
            if k < 0:
                return used, False
            q += k
            left -= k
        app, st, msg, nl, pf, connect, al, ver = _parse_stream(src, q, left, want, scratch, name,
                                                               alpn, a_hi, a_lo, a_ttl, a_chain)
        if st == 1:  # NEED_MORE
            f_app[s] = app
            if name_col[i] < 0:  # a row keeps the app of the name it completed
                app_col[i] = app
            return used, False
        app_col[i] = app
        f_flags[s] |= pf
        if st == 0 and app == APP_TLS:
            f_ver[s] = ver
            if al > 0:
                f_alpn[s] = _arena_add(arena, ent_off, ent_len, ast, alpn, 0, al, False)
        elif st == 0 and app == APP_DNS:
            qtype_col[i] = ver
        if st == 0 and nl > 0:
            nid = _arena_add(arena, ent_off, ent_len, ast, name, 0, nl)
            if stage == _SECOND_HELLO and f_name[s] >= 0 and not _same_name(arena, ent_off, ent_len, f_name[s], nid):
                f_flags[s] |= L7_SNI_CHANGED
            f_name[s] = nid
            name_col[i] = nid
            counters[C_TLS if app == APP_TLS else (C_HTTP if app == APP_HTTP else C_DNS)] += 1
        elif st == 3 and stage != _SECOND_HELLO:
            f_flags[s] |= L7_MALFORMED
            counters[C_MALFORMED] += 1
        elif stage == _FIRST:  # not a protocol with a name, or a message without one
            counters[C_NO_NAME] += 1
        flags_col[i] |= f_flags[s]  # f_flags only grows; keeps the row-only bits
        f_app[s] = app
        if st == 0 and stage == _FIRST:  # the first message is whole: judge the flow by it
            flags_col[i] |= L7_SEARCH_END
        if st == 0 and ((app == APP_HTTP and connect) or (app == APP_TLS and stage != _SECOND_HELLO)):
            k = (q - p - used) + msg  # CCS skipped + the message
            used += k
            f_base[s] += k
            f_stage[s] = _TUNNEL if app == APP_HTTP else _SECOND_HELLO
            continue
        f_state[s] = _DONE
        return used, True
    f_state[s] = _DONE
    return used, True


@njit(cache=True, nogil=True, _nrt=False)
def _same_name(arena, ent_off, ent_len, a, b):
    """Names a and b (both just stored, so both intact) are equal."""
    cap = ent_off.shape[0]
    size = arena.shape[0]
    la = ent_len[a % cap]
    if la != ent_len[b % cap]:
        return False
    oa = ent_off[a % cap] % size
    ob = ent_off[b % cap] % size
    for k in range(la):
        if arena[oa + k] != arena[ob + k]:
            return False
    return True


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _empty(iv_s, iv_e, bi):
    for j in range(MAX_HOLES):
        if iv_e[bi, j] > iv_s[bi, j]:
            return False
    return True


@njit(cache=True, nogil=True, _nrt=False)
def _shift(pool, bi, iv_s, iv_e, k):
    """Drop the first k stream bytes of buffer bi (the search moved past them)."""
    row = pool[bi]
    for j in range(MAX_HOLES):
        a, e = iv_s[bi, j], iv_e[bi, j]
        if e <= a:
            continue
        if e <= k:
            iv_s[bi, j] = 0
            iv_e[bi, j] = 0
            continue
        a = max(a, k)
        for x in range(a, e):  # dst < src: a forward copy is safe
            row[x - k] = row[x]
        iv_s[bi, j] = a - k
        iv_e[bi, j] = e - k


@njit(cache=True, nogil=True, _nrt=False)
def _l7(buf, n, verdict, flow, flow_id, dirs, proto, sport, dport, tcp_flags, tcp_seq, payload,
        payload_len, ts_ns, app_col, name_col, flags_col, qtype_col, rows_fid, f_fid, f_state, f_stage, f_app,
        f_name, f_base, f_isn, f_known, f_buf, f_segs, f_flags, f_ver, f_alpn, pool, iv_s, iv_e,
        b_slot, b_fid, b_ts, free, nfree, scratch, name, alpn, arena, ent_off, ent_len, ast,
        ans_row, ans_name, ans_hi, ans_lo, ans_ttl, a_hi, a_lo, a_ttl, a_chain, quic_rows, dns_any_port,
        counters):
    """Returns (DNS answers listed, QUIC rows listed, free buffers left)."""
    nans = 0
    nq = 0
    for i in range(n):
        app_col[i] = APP_NONE
        name_col[i] = -1
        flags_col[i] = 0
        qtype_col[i] = 0
        s = flow[i]
        if verdict[i] == Verdict.DROP or s < 0:
            continue
        if f_fid[s] != flow_id[i]:  # a new flow in this slot
            if f_buf[s] >= 0 and b_slot[f_buf[s]] == s:
                free[nfree] = f_buf[s]
                nfree += 1
            f_fid[s] = flow_id[i]
            f_state[s] = _NEW
            f_stage[s] = _FIRST
            f_base[s] = 0
            f_app[s] = APP_NONE
            f_name[s] = -1
            f_ver[s] = 0
            f_alpn[s] = -1
            f_known[s] = 0
            f_buf[s] = -1
            f_segs[s] = 0
            f_flags[s] = 0
        pr = proto[i]
        if pr == PROTO_UDP:
            port53 = sport[i] == DNS_PORT or dport[i] == DNS_PORT
            st = dns.NOT_DNS
            nl = 0
            na = 0
            if port53 or (dns_any_port and dport[i] != QUIC_PORT):
                st, nl, qt, _rc, na, _fl, _tx = dns.message(buf, payload[i], np.int64(payload_len[i]),
                                                            name, 0, a_hi, a_lo, a_ttl, 0, a_chain)
            if port53 or st == dns.OK:  # elsewhere, only what parses as DNS is DNS
                app_col[i] = APP_DNS
                if f_app[s] == APP_NONE:
                    f_app[s] = APP_DNS
                if st != dns.OK:
                    flags_col[i] = L7_MALFORMED
                    counters[C_MALFORMED] += 1
                    continue
                nid = _arena_add(arena, ent_off, ent_len, ast, name, 0, nl)
                name_col[i] = nid
                qtype_col[i] = qt
                counters[C_DNS] += 1
                if f_name[s] < 0:
                    f_name[s] = nid
                for k in range(na):
                    if nans == ans_row.shape[0]:
                        counters[C_ANSWERS_DROPPED] += na - k
                        break
                    ans_row[nans] = i
                    ans_name[nans] = nid
                    ans_hi[nans] = a_hi[k]
                    ans_lo[nans] = a_lo[k]
                    ans_ttl[nans] = a_ttl[k]
                    nans += 1
            elif dport[i] == QUIC_PORT and dirs[i] == 0 and f_state[s] != _DONE and payload_len[i] > 0:
                quic_rows[nq] = i
                nq += 1
            continue
        if pr != PROTO_TCP or dirs[i] != 0 or f_state[s] == _DONE:
            continue
        fl = tcp_flags[i]
        if fl & TH_SYN:  # the stream starts after the SYN's sequence number
            f_isn[s] = tcp_seq[i] + np.uint32(1)
            f_known[s] = 1
            continue
        plen = np.int64(payload_len[i])
        if plen == 0:
            continue
        if not f_known[s]:
            f_isn[s] = tcp_seq[i]
            f_known[s] = 1
            f_flags[s] |= L7_MIDSTREAM
        rel = np.int64(np.uint32(tcp_seq[i] - f_isn[s])) - f_base[s]
        if rel < 0 or rel >= MAX_STREAM:  # before the search point, or far ahead
            continue
        hint = APP_DNS if dport[i] == DNS_PORT else f_app[s]
        f_segs[s] += 1
        bi = f_buf[s]
        src_p = payload[i]
        if bi < 0 and rel == 0:
            # the common case: the whole message in this packet, parsed in place
            used, done = _advance(buf, src_p, plen, i, s, hint, scratch, name, alpn, a_hi, a_lo,
                                  a_ttl, a_chain, arena, ent_off, ent_len, ast, app_col, name_col,
                                  flags_col, qtype_col, f_state, f_stage, f_app, f_name, f_base, f_flags,
                                  f_ver, f_alpn, counters)
            if done:
                flags_col[i] |= L7_SEARCH_END
                continue
            src_p += used  # keep the rest, from the new search point
            plen -= used
            if plen == 0:  # nothing left to keep: the next message starts a packet
                flags_col[i] |= L7_SEARCH_MORE
                continue
        if bi < 0:
            if nfree == 0:
                nfree = _reclaim(rows_fid, b_slot, b_fid, b_ts, f_buf, f_state, f_flags, free,
                                 ts_ns[i])
            if nfree == 0:
                f_state[s] = _DONE
                f_flags[s] |= L7_GAVE_UP
                flags_col[i] = f_flags[s] | L7_SEARCH_END
                counters[C_POOL_EMPTY] += 1
                counters[C_GAVE_UP] += 1
                continue
            nfree -= 1
            bi = free[nfree]
            f_buf[s] = bi
            b_slot[bi] = s
            b_fid[bi] = flow_id[i]
            for k in range(MAX_HOLES):
                iv_s[bi, k] = 0
                iv_e[bi, k] = 0
        b_ts[bi] = ts_ns[i]
        overlapped, ok = _insert(pool, bi, iv_s, iv_e, buf, src_p, rel, plen)
        if overlapped:
            f_flags[s] |= L7_OVERLAP
            counters[C_OVERLAPS] += 1
        have = _prefix(iv_s, iv_e, bi)
        done = False
        if ok and have > 0:
            used, done = _advance(pool[bi], 0, have, i, s, hint, scratch, name, alpn, a_hi, a_lo,
                                  a_ttl, a_chain, arena, ent_off, ent_len, ast, app_col, name_col,
                                  flags_col, qtype_col, f_state, f_stage, f_app, f_name, f_base, f_flags,
                                  f_ver, f_alpn, counters)
            if name_col[i] >= 0:
                counters[C_REASSEMBLED] += 1
            if not done and used:
                _shift(pool, bi, iv_s, iv_e, used)
                have -= used
                if _empty(iv_s, iv_e, bi):
                    # the message ended where a segment did: the next one starts a
                    # packet, as on the in-place path, and the buffer goes back to the pool
                    # (a flow that searches on for a second ClientHello must not hold it)
                    free[nfree] = bi
                    nfree += 1
                    f_buf[s] = -1
                    flags_col[i] |= L7_SEARCH_MORE
                    continue
        if not done and (not ok or f_segs[s] >= MAX_SEGMENTS or have >= MAX_STREAM):
            f_state[s] = _DONE
            if f_stage[s] == _FIRST:  # limits reached with the name still incomplete
                f_flags[s] |= L7_GAVE_UP
                flags_col[i] |= f_flags[s]
                counters[C_GAVE_UP] += 1
            done = True
        flags_col[i] |= L7_SEARCH_END if done else L7_SEARCH_MORE
        if done:
            free[nfree] = bi
            nfree += 1
            f_buf[s] = -1
    return nans, nq, nfree


STALL_NS = 30_000_000_000  # a handshake that sent nothing for 30 s loses its buffer


@njit(cache=True, nogil=True, _nrt=False)
def _reclaim(rows_fid, b_slot, b_fid, b_ts, f_buf, f_state, f_flags, free, now):
    """Free the buffers of flows that ended (their slot holds another flow now) or
    stalled (the stalled flow gives up); returns how many are free.  Runs only when
    the pool is empty."""
    nfree = 0
    for bi in range(b_slot.shape[0]):
        s = b_slot[bi]
        if rows_fid[s] != b_fid[bi] or now - b_ts[bi] > STALL_NS:
            if f_buf[s] == bi:
                f_buf[s] = -1
                f_state[s] = _DONE
                f_flags[s] |= L7_GAVE_UP
            free[nfree] = bi
            nfree += 1
    return nfree


@njit(cache=True, nogil=True, _nrt=False)
def _quic_name(ch, scratch, name, alpn, arena, ent_off, ent_len, ast):
    """(name id, TLS version, ALPN id) of a QUIC ClientHello (a bare handshake
    message); ids -1 for none."""
    st, _need, nl, al, ver, _fl = tls.client_hello(ch, 0, ch.shape[0], False, scratch, name, 0,
                                                   alpn, 0)
    if st != tls.OK:
        return -1, 0, -1
    aid = _arena_add(arena, ent_off, ent_len, ast, alpn, 0, al, False) if al > 0 else -1
    nid = _arena_add(arena, ent_off, ent_len, ast, name, 0, nl) if nl > 0 else -1
    return nid, ver, aid


ROW_DTYPE = np.dtype({
    "names": ["fid", "name", "alpn", "base", "isn", "buf", "tls_version", "segs", "flags", "state",
              "stage", "app", "known"],
    # name, alpn: arena ids (-1 none; alpn is the wire-form list); tls_version: the highest
    # offered (supported_versions); buf: pool buffer, -1 none
    "formats": [np.uint64, np.int64, np.int64, np.int64, np.uint32, np.int32, np.uint16, np.uint16,
                np.uint16, np.uint8, np.uint8, np.uint8, np.uint8],
    "offsets": [0, 8, 16, 24, 32, 36, 40, 42, 44, 46, 47, 48, 49],
    "itemsize": 64})


class L7Table:
    """Names per flow: state per flow slot (sized like the flow table), the
    reassembly pool, the names arena, and the QUIC Initial decryptor."""

    def __init__(self, flow_capacity: int, config: L7Config | None = None) -> None:
        self.config = c = config or L7Config()
        # One 64-byte row per flow slot; the kernels take each field as an array (a
        # strided view), so a packet touches one cache line of this table, not thirteen.
        self.rows = tables.zeros(flow_capacity, ROW_DTYPE)
        for field in ROW_DTYPE.names:
            setattr(self, field, self.rows[field])
        self.name[:] = -1
        self.alpn[:] = -1
        self.buf[:] = -1
        self.pool = np.zeros((c.buffers, MAX_STREAM), np.uint8)
        self.iv_s = np.zeros((c.buffers, MAX_HOLES), np.int64)
        self.iv_e = np.zeros((c.buffers, MAX_HOLES), np.int64)
        self.b_slot = np.zeros(c.buffers, np.int64)
        self.b_fid = np.zeros(c.buffers, np.uint64)
        self.b_ts = np.zeros(c.buffers, np.int64)
        self.free = np.arange(c.buffers, dtype=np.int32)
        self.nfree = c.buffers
        self.scratch = np.zeros(tls.MAX_CLIENT_HELLO, np.uint8)
        self.name_buf = np.zeros(max(tls.SNI_MAX, http.HOST_MAX, dns.NAME_MAX) + 1, np.uint8)
        self.alpn_buf = np.zeros(tls.ALPN_MAX, np.uint8)
        self.arena = NamesArena(c.arena_bytes, c.arena_names)
        self.quic = QuicInitials(max_flows=c.quic_flows)
        self.decrypt_quic = True    # read QUIC Initials' names (the pipeline turns it off when unused)
        self.counters_ = np.zeros(len(COUNTER_NAMES), np.int64)
        self._a = (np.zeros(dns.MAX_ANSWERS, np.uint64), np.zeros(dns.MAX_ANSWERS, np.uint64),
                   np.zeros(dns.MAX_ANSWERS, np.uint32), np.zeros(dns.CHAIN, np.int64))
        self._grow_answers(0)

    def _grow_answers(self, n: int) -> None:
        if n and len(self.ans_row) >= n:
            return
        self.ans_row = np.zeros(n, np.int64)
        self.ans_name = np.zeros(n, np.int64)
        self.ans_hi = np.zeros(n, np.uint64)
        self.ans_lo = np.zeros(n, np.uint64)
        self.ans_ttl = np.zeros(n, np.uint32)
        self.quic_rows = np.zeros(n, np.int64)
        self.n_answers = 0

    def extract(self, b: PacketBatch, rows_fid: np.ndarray) -> None:
        """Fill the batch's `app`, `name_id` and `l7_flags`; `rows_fid` is the flow
        table's flow_id per slot (to tell a finished flow's buffer from a live one)."""
        n = b.n
        self._grow_answers(n)
        a = self.arena
        self.n_answers, nq, self.nfree = _l7(
            b.buf, n, b.verdict, b.flow, b.flow_id, b.dir, b.proto, b.sport, b.dport, b.tcp_flags,
            b.tcp_seq, b.payload, b.payload_len, b.ts_ns, b.app, b.name_id, b.l7_flags, b.qtype,
            rows_fid,
            self.fid, self.state, self.stage, self.app, self.name, self.base, self.isn, self.known,
            self.buf, self.segs, self.flags, self.tls_version, self.alpn, self.pool, self.iv_s,
            self.iv_e, self.b_slot, self.b_fid, self.b_ts,
            self.free, self.nfree, self.scratch, self.name_buf, self.alpn_buf, a.bytes, a.off,
            a.len, a.state, self.ans_row, self.ans_name, self.ans_hi, self.ans_lo, self.ans_ttl,
            *self._a, self.quic_rows, self.config.dns_any_port, self.counters_)
        if nq == 0:
            return
        if not self.decrypt_quic:
            self._skip_quic(b, self.quic_rows[:nq])
            return
        for i in self.quic_rows[:nq]:
            self._quic(b, int(i))

    def _skip_quic(self, b: PacketBatch, rows: np.ndarray) -> None:
        # A QUIC Initial costs ~50 us of Python to decrypt: skipped when nothing reads its
        # name.  A datagram that opens with a QUIC v1/v2 long header makes its flow QUIC,
        # with no name; either way the flow is searched no more.
        slots = b.flow[rows]
        p = b.payload[rows]
        last = b.buf.shape[0] - 1
        version = np.zeros(rows.shape[0], np.uint32)
        for k in range(1, 5):
            version = (version << 8) | b.buf[np.minimum(p + k, last)]
        long_header = (b.payload_len[rows] >= 5) & (b.buf[p] & 0xC0 == 0xC0)
        is_quic = long_header & ((version == quic.VERSION_1) | (version == quic.VERSION_2))
        b.app[rows[is_quic]] = self.app[slots[is_quic]] = APP_QUIC
        b.l7_flags[rows] |= L7_SEARCH_END
        fresh = self.state[slots] != _DONE
        self.state[slots] = _DONE
        self.counters_[C_QUIC_UNREAD] += int(np.unique(slots[is_quic & fresh]).size)

    def _quic(self, b: PacketBatch, i: int) -> None:
        # Python, once per client datagram of a QUIC flow still without a name
        s = int(b.flow[i])
        if self.state[s] == _DONE:  # an earlier datagram of this batch settled it
            return
        start = int(b.payload[i])
        status, ch = self.quic.feed(int(b.flow_id[i]), b.buf[start:start + int(b.payload_len[i])].tobytes())
        if status == quic.NEED_MORE:
            b.app[i] = self.app[s] = APP_QUIC
            b.l7_flags[i] |= L7_SEARCH_MORE
            return
        b.l7_flags[i] |= L7_SEARCH_END
        self.quic.forget(int(b.flow_id[i]))
        self.state[s] = _DONE
        if status == quic.NOT_QUIC:  # other UDP 443 traffic (or Google QUIC): no name to read
            self.counters_[C_NO_NAME] += 1
            return
        b.app[i] = self.app[s] = APP_QUIC
        if status != quic.OK:
            self.flags[s] |= L7_MALFORMED
            b.l7_flags[i] |= L7_MALFORMED
            self.counters_[C_MALFORMED] += 1
            return
        a = self.arena
        nid, ver, aid = (int(x) for x in _quic_name(np.frombuffer(ch, np.uint8), self.scratch,
                                                     self.name_buf, self.alpn_buf, a.bytes, a.off,
                                                     a.len, a.state))
        self.tls_version[s] = ver
        self.alpn[s] = aid
        if nid < 0:
            self.counters_[C_NO_NAME] += 1
            return
        self.name[s] = nid
        b.name_id[i] = nid
        self.counters_[C_QUIC] += 1

    def counters(self) -> dict[str, int]:
        return {name: int(v) for name, v in zip(COUNTER_NAMES, self.counters_)}
