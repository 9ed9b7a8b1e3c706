"""Slow, obvious twin of engine.http: the first request of a client stream.

Written from the same rules (engine/http.py's docstring and RFC 9112 / 9110 / 3986),
but line by line with regular expressions instead of a byte scan.  Its answers for a
stream prefix: NOT_HTTP once the bytes before the first SP cannot be a method; for an
incomplete request line, NEED_MORE while it is still a prefix of a valid one
(PARTIAL_LINE), else MALFORMED; header lines are judged once complete.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from egressd.engine.http import (F_ABSOLUTE_URI, F_CONNECT, F_HOST_MISMATCH, F_MULTIPLE_HOST,
                                 F_NO_HOST, HOST_MAX, M_CONNECT, M_DELETE, M_GET, M_HEAD,
                                 M_OPTIONS, M_OTHER, M_PATCH, M_POST, M_PUT, MALFORMED,
                                 MAX_HEADER_BYTES, METHOD_MAX, NEED_MORE, NOT_HTTP, OK)

METHODS = {b"GET": M_GET, b"POST": M_POST, b"HEAD": M_HEAD, b"PUT": M_PUT, b"DELETE": M_DELETE,
           b"OPTIONS": M_OPTIONS, b"PATCH": M_PATCH, b"CONNECT": M_CONNECT}
METHOD = re.compile(rb"[A-Z_-]{0,%d}" % (METHOD_MAX + 1))
TARGET = rb"[\x21-\x7e\x80-\xff]"
REQUEST_LINE = re.compile(rb"([A-Z_-]+) (" + TARGET + rb"+) HTTP/1\.[0-9]\r?")
# every prefix of a valid request line (without its LF)
PARTIAL_LINE = re.compile(rb"[A-Z_-]+ (?:" + TARGET + rb"*|" + TARGET
                          + rb"+ (?:H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?)")
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")
SUB_DELIMS_UNRESERVED = rb"A-Za-z0-9\-._~%!$&'()*+,;="
AUTHORITY = re.compile(rb"(?:\[([" + SUB_DELIMS_UNRESERVED + rb":]+)\]|([" + SUB_DELIMS_UNRESERVED
                       + rb"\x80-\xff]*))(?::[0-9]*)?")


@dataclass(frozen=True)
class Request:
    """What engine.http.request should return for a stream."""

    status: int
    need: int = 0
    host: bytes = b""
    method: int = 0
    flags: int = 0


def host_of(authority: bytes) -> bytes | None:
    """The host of `host [":" port]` (brackets dropped), None if that is not one."""
    m = AUTHORITY.fullmatch(authority)
    if not m:
        return None
    host = m[1] if m[1] is not None else m[2]
    return host if len(host) <= HOST_MAX else None


def reference_request(data: bytes) -> Request:
    window = data[:MAX_HEADER_BYTES]
    more = Request(MALFORMED) if len(data) >= MAX_HEADER_BYTES else Request(NEED_MORE, len(data) + 1)

    method = METHOD.match(window)[0]
    rest = window[len(method):]
    if len(method) > METHOD_MAX:
        return Request(NOT_HTTP)
    if not rest:
        return more
    if rest[:1] != b" " or not method:
        return Request(NOT_HTTP)
    if window.startswith(b"PRI * "):  # the HTTP/2 connection preface
        return Request(NOT_HTTP)

    line, lf, _ = window.partition(b"\n")
    if not lf:
        return more if PARTIAL_LINE.fullmatch(line) else Request(MALFORMED)
    m = REQUEST_LINE.fullmatch(line)
    if not m:
        return Request(MALFORMED)
    code = METHODS.get(m[1], M_OTHER)
    target = m[2]

    flags = F_CONNECT if code == M_CONNECT else 0
    target_host = None
    scheme = SCHEME.match(target)
    if scheme:
        flags |= F_ABSOLUTE_URI
        authority = re.match(rb"[^/?#]*", target[scheme.end():])[0].rpartition(b"@")[2]
        target_host = host_of(authority)
        if not target_host:
            return Request(MALFORMED)
    elif code == M_CONNECT and target[:1] not in (b"/", b"*"):
        target_host = host_of(target)
        if not target_host:
            return Request(MALFORMED)

    pos = len(line) + 1
    hosts: list[bytes] = []
    first, prev_host = True, False
    for raw in window[pos:].split(b"\n")[:-1]:  # the last piece has no LF yet
        pos += len(raw) + 1
        content = raw[:-1] if raw.endswith(b"\r") else raw
        if not content:
            break
        if b"\0" in content or b"\r" in content:
            return Request(MALFORMED)
        if content[0] in b" \t":  # obs-fold
            if first or prev_host:
                return Request(MALFORMED)
        else:
            name, colon, value = content.partition(b":")
            if not colon or not TOKEN.fullmatch(name):
                return Request(MALFORMED)
            prev_host = name.lower() == b"host"
            if prev_host:
                if not hosts:
                    h = host_of(value.strip(b" \t"))
                    if h is None:
                        return Request(MALFORMED)
                    hosts.append(h)
                else:
                    hosts.append(value)
        first = False
    else:
        return more

    if len(hosts) > 1:
        flags |= F_MULTIPLE_HOST
    if target_host is not None:
        host = target_host
        if hosts and hosts[0].lower() != target_host.lower():
            flags |= F_HOST_MISMATCH
    elif hosts:
        host = hosts[0]
    else:
        host = b""
        flags |= F_NO_HOST
    return Request(OK, pos, host, code, flags)
