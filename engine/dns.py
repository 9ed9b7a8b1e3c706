"""DNS: the query name and type of a message and, for responses, its addresses.

Sources: RFC 1035 (header 4.1.1, question 4.1.2, records 4.1.3, names and their
255-octet bound 2.3.4 and 3.1, compression 4.1.4), RFC 1035 4.2.2 (the 2-byte length
prefix over TCP), RFC 6891 6.2.4 (label types 0x40 and 0x80 are not in use), RFC 3596
(AAAA), RFC 1034 3.6.2 and 4.3.2 (CNAME chains in an answer), RFC 9619 (QDCOUNT of a
query is 1).

Compression pointers are the classic way to make a parser loop or run long.  Here a
pointer must land strictly before the first byte of the run of labels that led to it
(every compressor points at a name written earlier), so each jump goes further back
and no loop is possible; jumps are also counted (MAX_POINTERS) and a name is held to
255 octets in wire form (so at most 127 labels).  All walks are bounded by the bytes
present; the answer walk by ANCOUNT and MAX_RECORDS, the CNAME chain by MAX_CNAMES.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressd.engine.wire import u8, u16, u32, u64

OK, NEED_MORE, NOT_DNS, MALFORMED = 0, 1, 2, 3
F_RESPONSE = 1        # QR=1
F_TRUNCATED_NAME = 2  # a name runs past the end of the message
F_POINTER_LOOP = 4    # a pointer that does not go back, or more than MAX_POINTERS of them
F_NAME_TOO_LONG = 8   # a name over 255 octets (wire form) or MAX_LABELS labels
F_BAD_LABEL = 16      # label type 0x40 / 0x80, or a '.' inside a label of the query name
F_BAD_RECORD = 32     # header, question or answer record cut short; bad A/AAAA/CNAME data
F_TC = 64             # TC=1: the server cut the response (the client retries over TCP)
F_MORE_ANSWERS = 128  # answers not all walked (MAX_RECORDS, QDCOUNT > 1) or > MAX_ANSWERS addresses
NAME_MAX = 255
MAX_ANSWERS = 16
MAX_POINTERS = 16
MAX_LABELS = 127
MAX_RECORDS = 64      # answer records walked
MAX_CNAMES = 8        # CNAME links followed from the query name
CHAIN = MAX_CNAMES + 1   # the caller's scratch for the chain's names (`message`'s `chain`)

HEADER = 12
TYPE_A, TYPE_CNAME, TYPE_AAAA = 1, 5, 28
CLASS_IN = 1
_V4_MAPPED = np.uint64(0x0000FFFF00000000)


@njit(cache=True, nogil=True, _nrt=False)
def _name(buf, p, n, q, out, oo, copy):
    """Walk the name at offset q of the message buf[p:p+n].

    Returns (cause flag or 0, offset just past the name where it is written, length
    in presentation form).  With `copy`, the labels joined by '.' go to out[oo:].
    """
    lim = q  # a pointer must land before this
    jumps = 0
    end = -1
    wire = 1  # the root label
    labels = 0
    olen = 0
    for _ in range(MAX_LABELS + MAX_POINTERS + 1):
        if q >= n:
            return F_TRUNCATED_NAME, 0, 0
        c = np.int64(u8(buf, p + q))
        if c == 0:
            return 0, q + 1 if end < 0 else end, olen
        if c >= 0xC0:
            if q + 1 >= n:
                return F_TRUNCATED_NAME, 0, 0
            t = ((c & 0x3F) << 8) | np.int64(u8(buf, p + q + 1))
            if t >= lim or jumps == MAX_POINTERS:
                return F_POINTER_LOOP, 0, 0
            if end < 0:
                end = q + 2
            jumps += 1
            lim = t
            q = t
            continue
        if c > 63:
            return F_BAD_LABEL, 0, 0
        wire += c + 1
        labels += 1
        if wire > 255 or labels > MAX_LABELS:
            return F_NAME_TOO_LONG, 0, 0
        if q + 1 + c > n:
            return F_TRUNCATED_NAME, 0, 0
        if copy:
            if labels > 1:
                out[oo + olen] = 0x2E
                olen += 1
            for k in range(q + 1, q + 1 + c):
                b = u8(buf, p + k)
                if b == 0x2E:
                    return F_BAD_LABEL, 0, 0
                out[oo + olen] = b
                olen += 1
        else:
            olen += c + (labels > 1)
        q += 1 + c
    return F_NAME_TOO_LONG, 0, 0  # not reached: the bounds above end the walk first


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _deref(buf, p, q):
    """The first label of a name `_name` accepted, past its pointers."""
    for _ in range(MAX_POINTERS):
        c = u8(buf, p + q)
        if c < 0xC0:
            break
        q = np.int64(((c & 0x3F) << 8) | u8(buf, p + q + 1))
    return q


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _skip(buf, p, q):
    """Offset past a name `_name` accepted, where it is written."""
    for _ in range(MAX_LABELS + 1):
        c = np.int64(u8(buf, p + q))
        if c == 0:
            return q + 1
        if c >= 0xC0:
            return q + 2
        q += c + 1
    return q


@njit(cache=True, nogil=True, _nrt=False)
def _same_name(buf, p, a, b):
    """ASCII case-insensitive equality of two names `_name` accepted."""
    for _ in range(MAX_LABELS + 1):
        a = _deref(buf, p, a)
        b = _deref(buf, p, b)
        if a == b:
            return True
        la = u8(buf, p + a)
        if la != u8(buf, p + b):
            return False
        if la == 0:
            return True
        for k in range(1, la + 1):
            x = u8(buf, p + a + k)
            y = u8(buf, p + b + k)
            if x != y:
                if 0x41 <= x <= 0x5A:
                    x += 0x20
                if 0x41 <= y <= 0x5A:
                    y += 0x20
                if x != y:
                    return False
        a += la + 1
        b += la + 1
    return False


@njit(cache=True, nogil=True, _nrt=False)
def _in_chain(buf, p, owner, chain, depth):
    for d in range(depth):
        if _same_name(buf, p, owner, chain[d]):
            return True
    return False


@njit(cache=True, nogil=True, _nrt=False)
def message(buf, p, n, name, no, ans_hi, ans_lo, ans_ttl, ao, chain):
    """One DNS message, buf[p:p+n] (a UDP payload).

    Returns (status, name_len, qtype, rcode, n_answers, flags, txid).  On OK the first
    question's name (presentation form, no trailing dot, label bytes as sent) is in
    name[no:no+name_len] (NAME_MAX bytes provided by the caller) and, for a response,
    the A/AAAA addresses of the query name and of the CNAMEs it leads to, in message
    order, in ans_hi/ans_lo/ans_ttl[ao:ao+n_answers] (IPv4 as ::ffff:a.b.c.d).  Once
    the header is there, rcode, txid and the header flags (F_RESPONSE, F_TC) are
    returned whatever the status; on MALFORMED flags also name the cause.  `chain` is
    scratch of at least CHAIN int64 (the kernel allocates nothing: no reference counting
    in the hot loop).
    """
    n = max(0, min(n, buf.shape[0] - p))
    if n < HEADER or chain.shape[0] < CHAIN:
        return MALFORMED, 0, 0, 0, 0, F_BAD_RECORD, 0
    txid = np.int64(u16(buf, p))
    hf = np.int64(u16(buf, p + 2))
    qd = np.int64(u16(buf, p + 4))
    an = np.int64(u16(buf, p + 6))
    rcode = hf & 0xF
    flags = 0
    if hf & 0x8000:
        flags |= F_RESPONSE
    if hf & 0x0200:
        flags |= F_TC
    if (hf >> 11) & 0xF > 5 or (qd == 0 and not flags & F_RESPONSE):
        return NOT_DNS, 0, 0, rcode, 0, flags, txid
    if qd == 0:  # a response may leave out the question (e.g. FORMERR)
        return OK, 0, 0, rcode, 0, flags, txid

    f, q, name_len = _name(buf, p, n, HEADER, name, no, True)
    if f:
        return MALFORMED, 0, 0, rcode, 0, flags | f, txid
    if q + 4 > n:
        return MALFORMED, 0, 0, rcode, 0, flags | F_BAD_RECORD, txid
    qtype = np.int64(u16(buf, p + q))
    q += 4
    if not flags & F_RESPONSE or an == 0:
        return OK, name_len, qtype, rcode, 0, flags, txid
    if qd > 1:  # the answers follow questions this parser does not read
        return OK, name_len, qtype, rcode, 0, flags | F_MORE_ANSWERS, txid

    # 1. every answer walked is well formed
    walk = min(an, MAX_RECORDS)
    if an > MAX_RECORDS:
        flags |= F_MORE_ANSWERS
    first = q
    for _ in range(walk):
        f, e, _len = _name(buf, p, n, q, name, no, False)
        if f:
            return MALFORMED, 0, 0, rcode, 0, flags | f, txid
        if e + 10 > n:
            return MALFORMED, 0, 0, rcode, 0, flags | F_BAD_RECORD, txid
        rtype = u16(buf, p + e)
        rdata = e + 10
        rdlen = np.int64(u16(buf, p + e + 8))
        if rdata + rdlen > n:
            return MALFORMED, 0, 0, rcode, 0, flags | F_BAD_RECORD, txid
        if u16(buf, p + e + 2) == CLASS_IN:
            if (rtype == TYPE_A and rdlen != 4) or (rtype == TYPE_AAAA and rdlen != 16):
                return MALFORMED, 0, 0, rcode, 0, flags | F_BAD_RECORD, txid
            if rtype == TYPE_CNAME:
                f, e, _len = _name(buf, p, n, rdata, name, no, False)
                if f:
                    return MALFORMED, 0, 0, rcode, 0, flags | f, txid
                if e != rdata + rdlen:
                    return MALFORMED, 0, 0, rcode, 0, flags | F_BAD_RECORD, txid
        q = rdata + rdlen

    # 2. the CNAME chain from the query name, in any record order
    chain[0] = HEADER
    depth = 1
    for _ in range(MAX_CNAMES):
        q = first
        nxt = -1
        for _r in range(walk):
            e = _skip(buf, p, q)
            rdata = e + 10
            if (u16(buf, p + e) == TYPE_CNAME and u16(buf, p + e + 2) == CLASS_IN
                    and _same_name(buf, p, q, chain[depth - 1])):
                nxt = rdata
                break
            q = rdata + np.int64(u16(buf, p + e + 8))
        if nxt < 0:
            break
        chain[depth] = nxt
        depth += 1

    # 3. the addresses of the names on the chain
    k = 0
    q = first
    for _ in range(walk):
        e = _skip(buf, p, q)
        rtype = u16(buf, p + e)
        rdata = e + 10
        if ((rtype == TYPE_A or rtype == TYPE_AAAA) and u16(buf, p + e + 2) == CLASS_IN
                and _in_chain(buf, p, q, chain, depth)):
            if k == MAX_ANSWERS:
                flags |= F_MORE_ANSWERS
                break
            if rtype == TYPE_A:
                ans_hi[ao + k] = 0
                ans_lo[ao + k] = _V4_MAPPED | np.uint64(u32(buf, p + rdata))
            else:
                ans_hi[ao + k] = u64(buf, p + rdata)
                ans_lo[ao + k] = u64(buf, p + rdata + 8)
            ans_ttl[ao + k] = u32(buf, p + e + 4)
            k += 1
        q = rdata + np.int64(u16(buf, p + e + 8))
    return OK, name_len, qtype, rcode, k, flags, txid


@njit(cache=True, nogil=True, _nrt=False)
def tcp_message(buf, p, n, name, no, ans_hi, ans_lo, ans_ttl, ao, chain):
    """The first message of a DNS-over-TCP stream buf[p:p+n] (2-byte length prefix).

    NEED_MORE (all other fields 0) until the whole message is there; then `message`.
    """
    n = max(0, min(n, buf.shape[0] - p))
    if n < 2 or n - 2 < np.int64(u16(buf, p)):
        return NEED_MORE, 0, 0, 0, 0, 0, 0
    return message(buf, p + 2, np.int64(u16(buf, p)), name, no, ans_hi, ans_lo, ans_ttl, ao, chain)
