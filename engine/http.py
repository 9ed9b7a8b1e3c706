"""HTTP/1.x: the method and host name of the first request in a client's stream.

Sources: RFC 9112 (message syntax: request line 3, request target forms 3.2, host from
an absolute-form target 3.2.2, header fields 5, obs-fold 5.2, line endings 2.2), RFC
9110 (tokens 5.6.2, Host 7.2), RFC 3986 (authority, host, port), RFC 9113 3.4 (the
HTTP/2 connection preface).

`request` is called again on a longer prefix of the same stream while it answers
NEED_MORE, so every decision depends only on the bytes before the point where it is
made: a longer prefix never changes a NOT_HTTP, MALFORMED or OK answer.  Only the
request line is judged while incomplete (so that other protocols are told apart after
a few bytes); a header line is judged when its LF arrives.  Nothing past the first
MAX_HEADER_BYTES bytes is read.

Leniency follows what servers accept, strictness what could make two parsers see
different hosts: bare LF line ends and obs-fold of ordinary fields are accepted; a bare
CR, a NUL, whitespace before a field's colon, a folded Host field, and a host that is
not an RFC 3986 host are MALFORMED.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressd.engine.wire import copy, u8

OK, NEED_MORE, NOT_HTTP, MALFORMED = 0, 1, 2, 3
M_OTHER, M_GET, M_POST, M_HEAD, M_PUT, M_DELETE, M_OPTIONS, M_PATCH, M_CONNECT = range(9)
F_ABSOLUTE_URI, F_CONNECT, F_HOST_MISMATCH, F_NO_HOST, F_MULTIPLE_HOST = 1, 2, 4, 8, 16
HOST_MAX = 255
MAX_HEADER_BYTES = 8192
# Methods are tokens (RFC 9110 9.1); every registered one is upper case letters, '-' or
# '_' and at most 17 long.  Holding methods to that tells TLS, SSH ("SSH-2.0") and
# lower-case text protocols apart within a few bytes.
METHOD_MAX = 20

_TAB, _LF, _CR, _SP = 9, 10, 13, 32


def _key(method: bytes) -> int:
    """A method name packed big-endian, as the kernel packs the first 8 bytes."""
    return int.from_bytes(method, "big")


_K_GET, _K_POST, _K_HEAD, _K_PUT = _key(b"GET"), _key(b"POST"), _key(b"HEAD"), _key(b"PUT")
_K_DELETE, _K_OPTIONS, _K_PATCH = _key(b"DELETE"), _key(b"OPTIONS"), _key(b"PATCH")
_K_CONNECT, _K_PRI = _key(b"CONNECT"), _key(b"PRI")

# Character classes, one bit each in a 256-entry table.
C_METHOD, C_TCHAR, C_TARGET, C_HOST, C_LITERAL, C_SCHEME, C_DIGIT, C_ALPHA = (1 << k for k in range(8))


def _classes() -> np.ndarray:
    t = np.zeros(256, np.uint8)

    def mark(bit: int, chars: bytes | range) -> None:
        for c in chars:
            t[c] |= bit

    alpha = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    digit = b"0123456789"
    unreserved_subdelims = alpha + digit + b"-._~%!$&'()*+,;="
    mark(C_ALPHA, alpha)
    mark(C_DIGIT, digit)
    mark(C_METHOD, alpha[:26] + b"-_")
    mark(C_TCHAR, alpha + digit + b"!#$%&'*+-.^_`|~")
    mark(C_TARGET, range(0x21, 0x7F))
    mark(C_TARGET, range(0x80, 0x100))   # raw UTF-8 in paths is common; servers take it
    mark(C_HOST, unreserved_subdelims)   # RFC 3986 reg-name (pct-encoded as '%')
    mark(C_HOST, range(0x80, 0x100))     # raw UTF-8 (IDN) names, copied as they are
    mark(C_LITERAL, unreserved_subdelims + b":")  # inside [ ]: IPv6, IPvFuture, zone id
    mark(C_SCHEME, alpha + digit + b"+-.")
    return t


_CLASS = _classes()
_VERSION = np.frombuffer(b"HTTP/1.", np.uint8).copy()


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _is(c, cls):
    return (_CLASS[np.uintp(c)] & cls) != 0


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _method(key, length):
    if length == 3:
        if key == _K_GET:
            return M_GET
        if key == _K_PUT:
            return M_PUT
    elif length == 4:
        if key == _K_POST:
            return M_POST
        if key == _K_HEAD:
            return M_HEAD
    elif length == 5:
        if key == _K_PATCH:
            return M_PATCH
    elif length == 6:
        if key == _K_DELETE:
            return M_DELETE
    elif length == 7:
        if key == _K_OPTIONS:
            return M_OPTIONS
        if key == _K_CONNECT:
            return M_CONNECT
    return M_OTHER


@njit(cache=True, nogil=True, _nrt=False)
def _authority(buf, a, b):
    """`host [":" port]` in buf[a:b] (RFC 3986 3.2.2-3.2.3, no userinfo).

    Returns (ok, h0, h1): the host without brackets or port is buf[h0:h1].
    """
    q = a
    if q < b and u8(buf, q) == 0x5B:  # '[' IP-literal
        h0 = q + 1
        q = h0
        while q < b and u8(buf, q) != 0x5D:
            if not _is(u8(buf, q), C_LITERAL):
                return False, 0, 0
            q += 1
        if q == b or q == h0:
            return False, 0, 0
        h1 = q
        q += 1
    else:
        h0 = q
        while q < b and u8(buf, q) != 0x3A:
            if not _is(u8(buf, q), C_HOST):
                return False, 0, 0
            q += 1
        h1 = q
    if q < b:
        if u8(buf, q) != 0x3A:
            return False, 0, 0
        q += 1
        while q < b:
            if not _is(u8(buf, q), C_DIGIT):
                return False, 0, 0
            q += 1
    return h1 - h0 <= HOST_MAX, h0, h1


@njit(cache=True, nogil=True, _nrt=False)
def _scheme_end(buf, t0, t1):
    """Where `scheme "://"` ends if the target starts with one (absolute-form), else -1."""
    if t0 == t1 or not _is(u8(buf, t0), C_ALPHA):
        return -1
    q = t0 + 1
    while q < t1 and _is(u8(buf, q), C_SCHEME):
        q += 1
    if t1 - q >= 3 and u8(buf, q) == 0x3A and u8(buf, q + 1) == 0x2F and u8(buf, q + 2) == 0x2F:
        return q + 3
    return -1


@njit(cache=True, nogil=True, _nrt=False)
def _same_host(buf, a0, a1, b0, b1):
    """ASCII case-insensitive equality of buf[a0:a1] and buf[b0:b1]."""
    if a1 - a0 != b1 - b0:
        return False
    for k in range(a1 - a0):
        x = u8(buf, a0 + k)
        y = u8(buf, b0 + k)
        if x != y and not (_is(x, C_ALPHA) and (x | 0x20) == (y | 0x20)):
            return False
    return True


@njit(cache=True, nogil=True, _nrt=False)
def request(buf, p, n, host, ho):
    """The first request of the client stream buf[p:p+n].

    Returns (status, need, host_len, method, flags).  need: on OK the length of the
    header block (request line to the empty line, inclusive), on NEED_MORE the
    smallest stream length that could change the answer (n + 1), else 0.  On OK the
    host (port and IPv6 brackets removed, bytes as sent) is in host[ho:ho+host_len];
    the caller provides HOST_MAX bytes there.  method and flags are 0 unless OK.
    """
    n = max(0, min(n, buf.shape[0] - p))
    end = p + min(n, MAX_HEADER_BYTES)
    # running out of bytes: wait for more, unless the header block is already too long
    more = MALFORMED if n >= MAX_HEADER_BYTES else NEED_MORE
    more_need = 0 if n >= MAX_HEADER_BYTES else n + 1

    # method SP
    i = p
    key = 0
    while True:
        if i == end:
            return more, more_need, 0, 0, 0
        c = u8(buf, i)
        if c == _SP:
            break
        if i - p == METHOD_MAX or not _is(c, C_METHOD):
            return NOT_HTTP, 0, 0, 0, 0
        if i - p < 8:
            key = key * 256 + c
        i += 1
    mlen = i - p
    if mlen == 0:
        return NOT_HTTP, 0, 0, 0, 0
    method = _method(key, mlen)

    # request-target SP
    t0 = i + 1
    i = t0
    while True:
        if i == end:
            return more, more_need, 0, 0, 0
        c = u8(buf, i)
        if c == _SP:
            break
        if not _is(c, C_TARGET):
            return MALFORMED, 0, 0, 0, 0
        i += 1
    t1 = i
    if t1 == t0:
        return MALFORMED, 0, 0, 0, 0
    if mlen == 3 and key == _K_PRI and t1 - t0 == 1 and u8(buf, t0) == 0x2A:
        return NOT_HTTP, 0, 0, 0, 0  # "PRI * HTTP/2.0": HTTP/2 with prior knowledge

    # HTTP/1.<digit> then CRLF or LF
    i += 1
    for k in range(8):
        if i == end:
            return more, more_need, 0, 0, 0
        c = u8(buf, i)
        if k < 7:
            if c != _VERSION[k]:
                return MALFORMED, 0, 0, 0, 0
        elif not _is(c, C_DIGIT):
            return MALFORMED, 0, 0, 0, 0
        i += 1
    if i == end:
        return more, more_need, 0, 0, 0
    c = u8(buf, i)
    if c == _CR:
        i += 1
        if i == end:
            return more, more_need, 0, 0, 0
        c = u8(buf, i)
    if c != _LF:
        return MALFORMED, 0, 0, 0, 0
    i += 1

    # a host in the target: absolute-form (any method) or authority-form (CONNECT)
    flags = 0
    if method == M_CONNECT:
        flags |= F_CONNECT
    from_target = False
    th0 = 0
    th1 = 0
    a0 = _scheme_end(buf, t0, t1)
    if a0 >= 0:
        flags |= F_ABSOLUTE_URI
        a1 = a0
        while a1 < t1:
            c = u8(buf, a1)
            if c == 0x2F or c == 0x3F or c == 0x23:  # '/', '?', '#' end the authority
                break
            a1 += 1
        for k in range(a1 - 1, a0 - 1, -1):  # userinfo ends at the last '@'
            if u8(buf, k) == 0x40:
                a0 = k + 1
                break
        ok, th0, th1 = _authority(buf, a0, a1)
        if not ok or th1 == th0:  # an http(s) URI with an empty host is invalid (RFC 9110 4.2)
            return MALFORMED, 0, 0, 0, 0
        from_target = True
    elif method == M_CONNECT and u8(buf, t0) != 0x2F and u8(buf, t0) != 0x2A:
        ok, th0, th1 = _authority(buf, t0, t1)
        if not ok or th1 == th0:
            return MALFORMED, 0, 0, 0, 0
        from_target = True

    # header lines, each judged when its LF is there
    q = i
    first = True
    prev_host = False
    nhost = 0
    hh0 = 0
    hh1 = 0
    while True:
        # one pass to the LF, noting NULs and CRs: only a CR right before the LF may stay
        e = q
        nul = False
        ncr = 0
        while e < end:
            c = u8(buf, e)
            if c == _LF:
                break
            nul |= c == 0
            ncr += c == _CR
            e += 1
        if e == end:
            return more, more_need, 0, 0, 0
        le = e
        if le > q and u8(buf, le - 1) == _CR:
            le -= 1
            ncr -= 1
        if le == q:
            break
        if nul or ncr:
            return MALFORMED, 0, 0, 0, 0
        c = u8(buf, q)
        if c == _SP or c == _TAB:
            # obs-fold continues the previous field; a folded Host could be read two
            # ways, and nothing may precede the first field
            if first or prev_host:
                return MALFORMED, 0, 0, 0, 0
        else:
            k = q
            while k < le and u8(buf, k) != 0x3A:
                if not _is(u8(buf, k), C_TCHAR):
                    return MALFORMED, 0, 0, 0, 0
                k += 1
            if k == le or k == q:
                return MALFORMED, 0, 0, 0, 0
            prev_host = (k - q == 4 and (u8(buf, q) | 0x20) == 0x68 and (u8(buf, q + 1) | 0x20) == 0x6F
                         and (u8(buf, q + 2) | 0x20) == 0x73 and (u8(buf, q + 3) | 0x20) == 0x74)
            if prev_host:
                if nhost == 0:
                    v0 = k + 1
                    v1 = le
                    while v0 < v1 and (u8(buf, v0) == _SP or u8(buf, v0) == _TAB):
                        v0 += 1
                    while v1 > v0 and (u8(buf, v1 - 1) == _SP or u8(buf, v1 - 1) == _TAB):
                        v1 -= 1
                    ok, hh0, hh1 = _authority(buf, v0, v1)
                    if not ok:
                        return MALFORMED, 0, 0, 0, 0
                else:
                    flags |= F_MULTIPLE_HOST
                nhost += 1
        first = False
        q = e + 1

    if from_target:
        h0, h1 = th0, th1
        if nhost and not _same_host(buf, th0, th1, hh0, hh1):
            flags |= F_HOST_MISMATCH
    elif nhost:
        h0, h1 = hh0, hh1
    else:
        flags |= F_NO_HOST
        h0, h1 = 0, 0
    copy(host, ho, buf, h0, h1 - h0)
    return OK, e + 1 - p, h1 - h0, method, flags
