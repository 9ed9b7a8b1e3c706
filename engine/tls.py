"""TLS ClientHello: server name, ALPN, offered version, ECH, from a client's first bytes.

`client_hello` reads a TCP client's byte stream from its first byte (TLS records) or a
QUIC CRYPTO stream (a bare handshake message), and says as early as it can whether
the stream is not TLS at all, needs more bytes, is malformed, or holds a complete
ClientHello (RFC 8446 4.1.2, RFC 6066 3, RFC 7301 3.1).  A ClientHello fragmented
over several handshake records, an IDS evasion trick, is reassembled into `scratch`.

Every length is checked against its parent: the record against the handshake message
(a record may not run past it), the message against MAX_CLIENT_HELLO, each vector
against the message, the extensions block against the message's end, each extension
against the block, each list against its extension (exactly), each entry against its
list.  Any inconsistency is MALFORMED, and so are duplicates of the four extensions read
here (a server rejects them; an IDS that reads the first while a server reads the last
is evaded) and a host_name longer than SNI_MAX (not a DNS name; OpenSSL rejects it).
Loops are bounded by the bytes they walk: each step consumes at least one byte of a
message of at most MAX_CLIENT_HELLO bytes.

Names and ALPN are copied raw (no lower-casing): normalizing is the caller's job.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressd.engine.wire import copy, u8, u16

# status
OK, NEED_MORE, NOT_TLS, MALFORMED = 0, 1, 2, 3

# flags (meaningful with OK)
F_SNI_MULTIPLE = 1        # the server_name list has more than one entry
F_SNI_EMPTY = 2           # a host_name of length 0
F_ECH = 4                 # encrypted_client_hello (0xfe0d) offered
F_SNI_NOT_HOSTNAME = 8    # an entry of a name type other than host_name(0)
F_MULTI_RECORD = 16       # the ClientHello spans more than one TLS record
F_NO_SNI = 32             # no server_name extension
F_ALPN_TRUNCATED = 64     # ALPN entries left out: the list is longer than ALPN_MAX

SNI_MAX = 255
ALPN_MAX = 64
MAX_CLIENT_HELLO = 16384  # the handshake message, its 4-byte header included
MAX_RECORD = 16384        # a TLSPlaintext fragment (RFC 8446 5.1)

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_ECH = 0xFE0D
NAME_HOST = 0
_SEEN_SNI, _SEEN_ALPN, _SEEN_VERSIONS, _SEEN_ECH = 1, 2, 4, 8


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _grease(v):
    # RFC 8701: 0x0A0A, 0x1A1A, ... 0xFAFA
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


@njit(cache=True, nogil=True, _nrt=False)
def _server_name(b, d, end, name, no):
    """ServerNameList in b[d:end].  Returns (ok, sni_len, flags)."""
    if end - d < 3 or np.int64(u16(b, d)) != end - d - 2:
        return False, 0, 0
    r = d + 2
    entries = 0
    found = False
    sni_len = 0
    flags = 0
    while r < end:
        if end - r < 3:
            return False, 0, 0
        typ = u8(b, r)
        ln = np.int64(u16(b, r + 1))
        r += 3
        if ln > end - r:
            return False, 0, 0
        entries += 1
        if typ == NAME_HOST:
            if ln > SNI_MAX:
                return False, 0, 0
            if ln == 0:
                flags |= F_SNI_EMPTY
            if not found:
                found = True
                copy(name, no, b, r, ln)
                sni_len = ln
        else:
            flags |= F_SNI_NOT_HOSTNAME
        r += ln
    if entries > 1:
        flags |= F_SNI_MULTIPLE
    return True, sni_len, flags


@njit(cache=True, nogil=True, _nrt=False)
def _alpn(b, d, end, alpn, ao):
    """ProtocolNameList in b[d:end]; copies the leading entries that fit in ALPN_MAX.
    Returns (ok, alpn_len, flags)."""
    if end - d < 3 or np.int64(u16(b, d)) != end - d - 2:
        return False, 0, 0
    r = d + 2
    out = 0
    flags = 0
    while r < end:
        ln = np.int64(u8(b, r))
        if ln == 0 or ln > end - r - 1:
            return False, 0, 0
        if flags == 0 and out + 1 + ln <= ALPN_MAX:
            copy(alpn, ao + out, b, r, 1 + ln)
            out += 1 + ln
        else:  # whole entries only, and in order: none after the first that does not fit
            flags = F_ALPN_TRUNCATED
        r += 1 + ln
    return True, out, flags


@njit(cache=True, nogil=True, _nrt=False)
def _versions(b, d, end):
    """ClientHello supported_versions in b[d:end].  Returns (ok, highest non-GREASE
    version or -1; drafts of TLS 1.3 rank below TLS 1.3 itself)."""
    if end - d < 1:
        return False, -1
    ln = np.int64(u8(b, d))
    if ln != end - d - 1 or ln < 2 or ln & 1:
        return False, -1
    best = -1
    for r in range(d + 1, end, 2):
        v = np.int64(u16(b, r))
        if not _grease(v) and (best < 0 or _rank(v) > _rank(best)):
            best = v
    return True, best


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _rank(v):
    """Order of versions: TLS 1.3 drafts (0x7fNN) come just below TLS 1.3 (0x0304)."""
    if v >> 8 == 0x7F:
        return 0x0303 * 256 + (v & 0xFF)
    return v * 256


@njit(cache=True, nogil=True, _nrt=False)
def _body(b, s, e, name, no, alpn, ao):
    """The ClientHello body b[s:e] (after the handshake header).
    Returns (status, sni_len, alpn_len, version, flags)."""
    if e - s < 35:  # legacy_version, random, legacy_session_id's length
        return MALFORMED, 0, 0, 0, 0
    version = np.int64(u16(b, s))
    q = s + 34
    sid = np.int64(u8(b, q))
    q += 1
    if sid > 32 or sid > e - q:
        return MALFORMED, 0, 0, 0, 0
    q += sid
    if e - q < 2:
        return MALFORMED, 0, 0, 0, 0
    suites = np.int64(u16(b, q))
    q += 2
    if suites < 2 or suites & 1 or suites > e - q:
        return MALFORMED, 0, 0, 0, 0
    q += suites
    if e - q < 1:
        return MALFORMED, 0, 0, 0, 0
    methods = np.int64(u8(b, q))
    q += 1
    if methods < 1 or methods > e - q:
        return MALFORMED, 0, 0, 0, 0
    q += methods
    flags = F_NO_SNI
    if q == e:  # no extensions block at all (allowed before TLS 1.3)
        return OK, 0, 0, version, flags
    if e - q < 2 or np.int64(u16(b, q)) != e - q - 2:
        return MALFORMED, 0, 0, 0, 0
    q += 2
    sni_len = 0
    alpn_len = 0
    seen = 0
    while q < e:
        if e - q < 4:
            return MALFORMED, 0, 0, 0, 0
        typ = u16(b, q)
        ln = np.int64(u16(b, q + 2))
        q += 4
        if ln > e - q:
            return MALFORMED, 0, 0, 0, 0
        d = q
        q += ln
        if typ == EXT_SERVER_NAME:
            if seen & _SEEN_SNI:
                return MALFORMED, 0, 0, 0, 0
            seen |= _SEEN_SNI
            ok, sni_len, f = _server_name(b, d, q, name, no)
            if not ok:
                return MALFORMED, 0, 0, 0, 0
            flags = (flags & ~F_NO_SNI) | f
        elif typ == EXT_ALPN:
            if seen & _SEEN_ALPN:
                return MALFORMED, 0, 0, 0, 0
            seen |= _SEEN_ALPN
            ok, alpn_len, f = _alpn(b, d, q, alpn, ao)
            if not ok:
                return MALFORMED, 0, 0, 0, 0
            flags |= f
        elif typ == EXT_SUPPORTED_VERSIONS:
            if seen & _SEEN_VERSIONS:
                return MALFORMED, 0, 0, 0, 0
            seen |= _SEEN_VERSIONS
            ok, best = _versions(b, d, q)
            if not ok:
                return MALFORMED, 0, 0, 0, 0
            if best >= 0:
                version = best
        elif typ == EXT_ECH:
            if seen & _SEEN_ECH:
                return MALFORMED, 0, 0, 0, 0
            seen |= _SEEN_ECH
            flags |= F_ECH
    return OK, sni_len, alpn_len, version, flags


@njit(cache=True, nogil=True, _nrt=False)
def client_hello(buf, p, n, records, scratch, name, no, alpn, ao):
    """Parse the ClientHello at the start of the stream buf[p:p+n].

    records: True for TLS over TCP (the stream is TLS records), False for a bare
    handshake stream (QUIC CRYPTO).  scratch: uint8, >= MAX_CLIENT_HELLO bytes, holds
    a ClientHello spread over several records.  The caller provides name[no:no+SNI_MAX]
    and alpn[ao:ao+ALPN_MAX]; on OK they hold the first host_name and the wire bytes of
    the leading ALPN entries (length-prefixed names).

    Returns (status, need, sni_len, alpn_len, version, flags).  need: on NEED_MORE,
    the fewest stream bytes, from p, that could complete the ClientHello given what
    was seen; exact once the last record header is in; 0 before a record header (or
    the bare handshake header) is complete.  On OK, the stream bytes the ClientHello
    took (to the end of its last record), where the client's next message starts.  version (OK only): the highest
    non-GREASE supported_versions entry, else legacy_version.  Every other field is 0
    unless the status is OK.
    """
    base = np.int64(p)
    avail = np.int64(n)
    if not records:
        if avail < 1:
            return NEED_MORE, 0, 0, 0, 0, 0
        if u8(buf, base) != HANDSHAKE_CLIENT_HELLO:
            return NOT_TLS, 0, 0, 0, 0, 0
        if avail < 4:
            return NEED_MORE, 0, 0, 0, 0, 0
        total = 4 + ((np.int64(u8(buf, base + 1)) << 16) | np.int64(u16(buf, base + 2)))
        if total > MAX_CLIENT_HELLO:
            return MALFORMED, 0, 0, 0, 0, 0
        if avail < total:
            return NEED_MORE, total, 0, 0, 0, 0
        st, sni_len, alpn_len, version, flags = _body(buf, base + 4, base + total, name, no, alpn, ao)
        return st, total if st == OK else 0, sni_len, alpn_len, version, flags

    i = np.int64(0)      # the next record header, from p
    covered = 0          # handshake bytes in the records walked so far
    hs_len = 0
    total = -1           # handshake message bytes with its header, once that is seen
    nrec = 0
    need = 0
    while total < 0 or covered < total:
        left = avail - i
        q = base + i
        # the first record decides NOT_TLS; after it, anything but a handshake
        # record before the ClientHello is complete is an inconsistency
        wrong = NOT_TLS if nrec == 0 else MALFORMED
        if left < 1:
            return NEED_MORE, need, 0, 0, 0, 0
        if u8(buf, q) != CONTENT_HANDSHAKE:
            return wrong, 0, 0, 0, 0, 0
        if left < 2:
            return NEED_MORE, need, 0, 0, 0, 0
        if u8(buf, q + 1) != 3:
            return wrong, 0, 0, 0, 0, 0
        if left < 5:
            return NEED_MORE, need, 0, 0, 0, 0
        rlen = np.int64(u16(buf, q + 3))
        if rlen == 0 or rlen > MAX_RECORD:  # zero-length handshake fragments are forbidden
            return MALFORMED, 0, 0, 0, 0, 0
        have = min(rlen, left - 5)
        # the handshake header may itself be split over records
        k = covered
        while k < 4 and k - covered < have:
            v = np.int64(u8(buf, q + 5 + k - covered))
            if k == 0:
                if v != HANDSHAKE_CLIENT_HELLO:
                    return NOT_TLS, 0, 0, 0, 0, 0
            else:
                hs_len = (hs_len << 8) | v
            k += 1
        if total < 0 and k == 4:
            total = 4 + hs_len
            if total > MAX_CLIENT_HELLO:
                return MALFORMED, 0, 0, 0, 0, 0
        if total >= 0 and covered + rlen > total:
            return MALFORMED, 0, 0, 0, 0, 0
        i += 5 + rlen
        missing = (total if total >= 0 else 4) - covered - rlen
        need = i + 5 + missing if missing > 0 else i
        if have < rlen:
            return NEED_MORE, need, 0, 0, 0, 0
        if nrec == 0 and rlen == total:  # the common case: one record, parsed in place
            st, sni_len, alpn_len, version, flags = _body(buf, q + 9, q + 5 + rlen, name, no, alpn, ao)
            return st, i if st == OK else 0, sni_len, alpn_len, version, flags
        copy(scratch, covered, buf, q + 5, rlen)
        covered += rlen
        nrec += 1
    st, sni_len, alpn_len, version, flags = _body(scratch, 4, total, name, no, alpn, ao)
    if st != OK:
        return st, 0, 0, 0, 0, 0
    return st, i, sni_len, alpn_len, version, flags | F_MULTI_RECORD
