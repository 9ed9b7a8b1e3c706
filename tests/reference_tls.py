"""The ClientHello parser of engine.tls written the obvious way, for differential tests.

Straight from RFC 8446 (5.1 records, 4.1.2 ClientHello, 4.2 extensions, 4.2.1
supported_versions), RFC 6066 3 (server_name), RFC 7301 3.1 (ALPN) and RFC 8701
(GREASE), with bytes slicing and exceptions instead of offsets and status codes.  The
choices the RFCs leave open are engine.tls's (see its docstring): the status and flag
numbers, `need`, MAX_CLIENT_HELLO, and that duplicates of the extensions read here and
host names over SNI_MAX bytes are malformed.
"""
from __future__ import annotations

from typing import NamedTuple

OK, NEED_MORE, NOT_TLS, MALFORMED = 0, 1, 2, 3
F_SNI_MULTIPLE, F_SNI_EMPTY, F_ECH, F_SNI_NOT_HOSTNAME = 1, 2, 4, 8
F_MULTI_RECORD, F_NO_SNI, F_ALPN_TRUNCATED = 16, 32, 64
SNI_MAX, ALPN_MAX, MAX_CLIENT_HELLO = 255, 64, 16384


class Hello(NamedTuple):
    status: int
    need: int = 0
    sni: bytes = b""
    alpn: bytes = b""   # the wire bytes of the ALPN entries kept
    version: int = 0
    flags: int = 0


class Stop(Exception):
    """Parsing ends early with this result."""

    def __init__(self, result: Hello) -> None:
        super().__init__(result)
        self.result = result


def malformed() -> Stop:
    return Stop(Hello(MALFORMED))


class Reader:
    """Consumes a byte string front to back; running short is malformed."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def take(self, count: int) -> bytes:
        if count > len(self.data):
            raise malformed()
        out, self.data = self.data[:count], self.data[count:]
        return out

    def uint(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")

    def vector(self, width: int) -> bytes:
        """opaque x<..2^(8*width)-1>: a length of `width` bytes, then that many bytes."""
        return self.take(self.uint(width))

    def done(self) -> bool:
        return not self.data


def client_hello(stream: bytes, records: bool = True) -> Hello:
    """The result engine.tls.client_hello gives for this stream (sni/alpn as bytes)."""
    try:
        message, pieces, used = handshake_from_records(stream) if records else handshake_alone(stream)
        return parse_client_hello(message[4:], pieces > 1)._replace(need=used)
    except Stop as stop:
        return stop.result


def handshake_alone(stream: bytes) -> tuple[bytes, int, int]:
    if stream[:1] and stream[0] != 1:
        raise Stop(Hello(NOT_TLS))
    if len(stream) < 4:
        raise Stop(Hello(NEED_MORE))
    size = 4 + int.from_bytes(stream[1:4], "big")
    if size > MAX_CLIENT_HELLO:
        raise malformed()
    if len(stream) < size:
        raise Stop(Hello(NEED_MORE, size))
    return stream[:size], 1, size


def handshake_from_records(stream: bytes) -> tuple[bytes, int, int]:
    """Concatenate the fragments of the handshake records that carry the ClientHello;
    also say how many records and stream bytes they took."""
    message = b""
    size = None          # of the handshake message, once its 4-byte header is in
    pos = 0
    count = 0
    need = 0
    while size is None or len(message) < size:
        wrong = Hello(NOT_TLS if count == 0 else MALFORMED)
        header = stream[pos:pos + 5]
        if len(header) >= 1 and header[0] != 22:      # ContentType handshake
            raise Stop(wrong)
        if len(header) >= 2 and header[1] != 3:       # ProtocolVersion 3.x
            raise Stop(wrong)
        if len(header) < 5:
            raise Stop(Hello(NEED_MORE, need))
        length = int.from_bytes(header[3:5], "big")
        if not 1 <= length <= 2 ** 14:
            raise malformed()
        fragment = stream[pos + 5:pos + 5 + length]
        if count == 0 and fragment and fragment[0] != 1:  # HandshakeType client_hello
            raise Stop(Hello(NOT_TLS))
        so_far = message + fragment
        if size is None and len(so_far) >= 4:
            size = 4 + int.from_bytes(so_far[1:4], "big")
            if size > MAX_CLIENT_HELLO:
                raise malformed()
        if size is not None and len(message) + length > size:
            raise malformed()
        pos += 5 + length
        missing = (4 if size is None else size) - len(message) - length
        need = pos + 5 + missing if missing > 0 else pos
        if len(fragment) < length:
            raise Stop(Hello(NEED_MORE, need))
        message = so_far
        count += 1
    return message, count, pos


def is_grease(value: int) -> bool:
    return value in {0x0A0A + 0x1010 * k for k in range(16)}


def parse_client_hello(body: bytes, multi: bool) -> Hello:
    r = Reader(body)
    version = r.uint(2)          # legacy_version
    r.take(32)                   # random
    if len(r.vector(1)) > 32:    # legacy_session_id<0..32>
        raise malformed()
    suites = r.vector(2)         # cipher_suites<2..2^16-2>
    if not suites or len(suites) % 2:
        raise malformed()
    if not r.vector(1):          # legacy_compression_methods<1..2^8-1>
        raise malformed()
    extensions = []
    if not r.done():
        block = Reader(r.vector(2))
        if not r.done():
            raise malformed()
        while not block.done():
            kind = block.uint(2)
            extensions.append((kind, block.vector(2)))
    read_here = [kind for kind, _ in extensions if kind in (0, 16, 43, 0xFE0D)]
    if len(read_here) != len(set(read_here)):
        raise malformed()
    found = dict(extensions)

    flags = F_MULTI_RECORD if multi else 0
    sni = alpn = b""
    if 0 in found:
        sni, sni_flags = server_name(found[0])
        flags |= sni_flags
    else:
        flags |= F_NO_SNI
    if 16 in found:
        alpn, alpn_flags = protocols(found[16])
        flags |= alpn_flags
    if 43 in found:
        offered = supported_versions(found[43])
        # TLS 1.3 drafts (0x7fNN) rank between TLS 1.2 and TLS 1.3
        version = max([v for v in offered if not is_grease(v)], default=version,
                      key=lambda v: 0x0303 * 256 + (v & 0xFF) if v >> 8 == 0x7F else v * 256)
    if 0xFE0D in found:
        flags |= F_ECH
    return Hello(OK, 0, sni, alpn, version, flags)


def server_name(data: bytes) -> tuple[bytes, int]:
    """ServerNameList: the first host_name and the flags."""
    r = Reader(data)
    entries = Reader(r.vector(2))
    if not r.done() or entries.done():
        raise malformed()
    names = []                   # (name_type, name)
    while not entries.done():
        names.append((entries.uint(1), entries.vector(2)))
    hosts = [name for kind, name in names if kind == 0]
    if any(len(h) > SNI_MAX for h in hosts):
        raise malformed()
    flags = 0
    if len(names) > 1:
        flags |= F_SNI_MULTIPLE
    if b"" in hosts:
        flags |= F_SNI_EMPTY
    if len(hosts) < len(names):
        flags |= F_SNI_NOT_HOSTNAME
    return (hosts[0] if hosts else b""), flags


def protocols(data: bytes) -> tuple[bytes, int]:
    """ProtocolNameList: the wire bytes of the leading entries within ALPN_MAX."""
    r = Reader(data)
    entries = Reader(r.vector(2))
    if not r.done() or entries.done():
        raise malformed()
    names = []
    while not entries.done():
        name = entries.vector(1)
        if not name:
            raise malformed()
        names.append(name)
    kept = b""
    for name in names:
        wire = bytes([len(name)]) + name
        if len(kept) + len(wire) > ALPN_MAX:
            return kept, F_ALPN_TRUNCATED
        kept += wire
    return kept, 0


def supported_versions(data: bytes) -> list[int]:
    r = Reader(data)
    listed = r.vector(1)
    if not r.done() or len(listed) < 2 or len(listed) % 2:
        raise malformed()
    return [int.from_bytes(listed[k:k + 2], "big") for k in range(0, len(listed), 2)]
