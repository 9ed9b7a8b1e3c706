"""The ClientHello of a QUIC flow, from the client's Initial packets (QUIC v1 and v2).

Initial packets are encrypted with keys anyone can derive from the Destination
Connection ID (RFC 9001 section 5.2, RFC 9369 section 3.3), so an observer can read
the ClientHello the client sends in them.  This runs in Python with `cryptography`
rather than in a numba kernel: AES-GCM is needed, and it runs only while a new QUIC
flow has not yet shown its whole ClientHello.

Hostile input is expected: every length is checked against its container, every loop
is bounded, and state is bounded per flow and in flow count.  Nothing raises out of
`QuicInitials.feed`; a packet that fails to decrypt or parse only yields MALFORMED.
"""
from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# feed() statuses
OK = 0          # the ClientHello handshake message is complete
NEED_MORE = 1   # not yet a contiguous ClientHello from CRYPTO offset 0
NOT_QUIC = 2    # not a v1/v2 Initial from a client
MALFORMED = 3   # an Initial failed to decrypt or parse, or the flow broke a bound

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF

MAX_CRYPTO = 16 * 1024      # CRYPTO stream bytes kept per flow
MIN_DATAGRAM = 1200         # RFC 9000 14.1: servers discard Initials in smaller datagrams
MAX_COALESCED = 8           # QUIC packets walked per datagram
MAX_DCIDS = 2               # first Initial's DCID, plus the one a Retry imposes
_MAX_CID = 20               # RFC 9000 17.2: v1 and v2 connection ids are <= 20 bytes
_SAMPLE = 16                # header protection sample


@dataclass(frozen=True)
class _Version:
    salt: bytes
    label: bytes            # HKDF label prefix of key, iv and hp
    initial: int            # long-header packet type of Initial
    retry: int              # Retry carries no Length field: it ends the walk


_VERSIONS = {
    VERSION_1: _Version(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic ", 0, 3),
    VERSION_2: _Version(bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2 ", 1, 0),
}


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    # TLS 1.3 HKDF-Expand-Label with an empty context; every output here is at most
    # one SHA-256 block, so HKDF-Expand is a single HMAC.
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", "sha256")[:length]


def client_initial_keys(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) protecting the client's Initial packets of `version` for `dcid`."""
    v = _VERSIONS[version]
    initial_secret = hmac.digest(v.salt, dcid, "sha256")  # HKDF-Extract
    client = _expand_label(initial_secret, b"client in", 32)
    return (_expand_label(client, v.label + b"key", 16),
            _expand_label(client, v.label + b"iv", 12),
            _expand_label(client, v.label + b"hp", 16))


def protect_client_initial(version: int, dcid: bytes, header: bytes, pn_len: int,
                           payload: bytes) -> bytes:
    """A client Initial as sent (RFC 9001 5): `payload` sealed with the Initial keys of
    `dcid` under `header` (which ends with a packet number of 0 in `pn_len` bytes), then
    header protection over the first byte's low bits and the packet number.  What the
    decryptor below undoes; tests and traffic generators build their Initials with it."""
    key, iv, hp = client_initial_keys(version, dcid)
    sealed = AESGCM(key).encrypt(iv, payload, header)   # nonce: iv ^ packet number 0
    sample = sealed[4 - pn_len:20 - pn_len]              # 4 bytes after the number's start
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)
    out = bytearray(header)
    out[0] ^= mask[0] & 0x0F
    for k in range(pn_len):
        out[len(header) - pn_len + k] ^= mask[1 + k]
    return bytes(out) + sealed


class _Keys:
    __slots__ = ("aead", "iv", "hp")

    def __init__(self, version: int, dcid: bytes) -> None:
        key, iv, hp = client_initial_keys(version, dcid)
        self.aead = AESGCM(key)
        self.iv = int.from_bytes(iv, "big")
        # ECB holds no state between blocks, so one encryptor serves every sample.
        self.hp = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()


# Shared by all flows: retransmissions and coalesced packets reuse their flow's keys.
_keys = lru_cache(maxsize=4096)(_Keys)


def _varint(b: bytes, i: int) -> tuple[int, int]:
    """RFC 9000 16 variable-length integer at b[i]: (value, next index), next -1 if truncated."""
    if i >= len(b):
        return 0, -1
    n = 1 << (b[i] >> 6)
    if i + n > len(b):
        return 0, -1
    return int.from_bytes(b[i:i + n], "big") & ((1 << (8 * n - 2)) - 1), i + n


@dataclass(frozen=True)
class _Initial:
    version: int
    start: int              # first byte of the packet in the datagram
    dcid: bytes
    pn_off: int             # protected packet number
    end: int                # one past the packet's last byte


def _walk(d: bytes) -> tuple[list[_Initial], bool] | None:
    """Initial packets among a datagram's coalesced QUIC packets, and whether a header was bad.

    None when the datagram does not start with a v1/v2 long header.
    """
    initials: list[_Initial] = []
    pos = 0
    for _ in range(MAX_COALESCED):
        # A short header (or zero padding after the last packet) runs to the datagram's end.
        if pos + 7 > len(d) or not d[pos] & 0x80:
            break
        version = int.from_bytes(d[pos + 1:pos + 5], "big")
        v = _VERSIONS.get(version)
        if v is None:
            if pos == 0:
                return None
            break           # RFC 9000 12.2: ignore what follows a foreign packet
        ptype = (d[pos] >> 4) & 3
        if ptype == v.retry:
            break
        i = pos + 5
        dlen = d[i]
        dcid = d[i + 1:i + 1 + dlen]
        i += 1 + dlen
        if dlen > _MAX_CID or i >= len(d) or d[i] > _MAX_CID:
            return initials, True
        i += 1 + d[i]
        if ptype == v.initial:
            tlen, i = _varint(d, i)
            if i < 0 or tlen > len(d) - i:
                return initials, True
            i += tlen
        length, i = _varint(d, i)
        if i < 0 or length > len(d) - i:
            return initials, True
        if ptype == v.initial:
            initials.append(_Initial(version, pos, dcid, i, i + length))
        pos = i + length
    return initials, False


def _decode_pn(largest: int, truncated: int, nbits: int) -> int:
    # RFC 9000 appendix A.3
    expected = largest + 1
    win = 1 << nbits
    half = win // 2
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + half and candidate >= win:
        return candidate - win
    return candidate


def _open(d: bytes, h: _Initial, keys: _Keys, largest: int) -> tuple[int, bytes] | None:
    """(packet number, plaintext payload), None if the packet does not decrypt."""
    sample = h.pn_off + 4   # sampled as if the packet number were 4 bytes (RFC 9001 5.4.2)
    if sample + _SAMPLE > h.end:
        return None
    mask = keys.hp.update(d[sample:sample + _SAMPLE])
    first = d[h.start] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    payload = h.pn_off + pn_len
    truncated = int.from_bytes(d[h.pn_off:payload], "big") ^ int.from_bytes(mask[1:1 + pn_len], "big")
    pn = _decode_pn(largest, truncated, 8 * pn_len)
    header = bytes([first]) + d[h.start + 1:h.pn_off] + truncated.to_bytes(pn_len, "big")
    try:
        plain = keys.aead.decrypt((keys.iv ^ pn).to_bytes(12, "big"), d[payload:h.end], header)
    except InvalidTag:
        return None
    if first & 0x0C:        # reserved bits, meaningful only once the packet authenticates
        return None
    return pn, plain


_NONZERO = re.compile(rb"[^\x00]")


def _crypto_frames(p: bytes) -> list[tuple[int, bytes]] | None:
    """(offset, data) of the CRYPTO frames of an Initial payload.

    None if a frame is truncated or of a type an Initial may not carry.  Every pass of
    the loop consumes at least one byte.
    """
    if not p:
        return None         # RFC 9000 12.4: a packet holds at least one frame
    frames: list[tuple[int, bytes]] = []
    i = 0
    while i < len(p):
        t = p[i]
        i += 1
        if t == 0x00:       # PADDING: skip the whole run at C speed
            m = _NONZERO.search(p, i)
            i = m.start() if m else len(p)
        elif t == 0x01:     # PING
            pass
        elif t == 0x06:     # CRYPTO
            off, i = _varint(p, i)
            if i < 0:
                return None
            n, i = _varint(p, i)
            if i < 0 or n > len(p) - i:
                return None
            frames.append((off, p[i:i + n]))
            i += n
        elif t in (0x02, 0x03):     # ACK: largest, delay, range count, first range, ranges, ECN
            fields = [0] * 4
            for k in range(4):
                fields[k], i = _varint(p, i)
                if i < 0:
                    return None
            if fields[2] > len(p) - i:      # each range is at least two bytes
                return None
            for _ in range(2 * fields[2] + (3 if t == 0x03 else 0)):
                _, i = _varint(p, i)
                if i < 0:
                    return None
        elif t == 0x1C:     # CONNECTION_CLOSE: error code, frame type, reason phrase
            _, i = _varint(p, i)
            if i >= 0:
                _, i = _varint(p, i)
            if i >= 0:
                n, i = _varint(p, i)
            if i < 0 or n > len(p) - i:
                return None
            i += n
        else:               # also every non-minimal frame type encoding (RFC 9000 12.4)
            return None
    return frames


class _Flow:
    __slots__ = ("dcids", "packets", "largest", "data", "have", "final")

    def __init__(self) -> None:
        self.dcids: list[bytes] = []    # key-deriving DCIDs, first Initial's first
        self.packets = 0                # Initial packets tried
        self.largest = -1               # largest packet number decrypted
        self.data = bytearray()         # CRYPTO stream from offset 0
        self.have = bytearray()         # 1 where data holds a received byte
        self.final: int | None = None   # the status every later feed returns, once failed

    def add(self, off: int, chunk: bytes) -> bool:
        """Store a CRYPTO frame, first data wins; False if it contradicts bytes already held."""
        end = off + len(chunk)
        if len(self.data) < end:
            grow = end - len(self.data)
            self.data += bytes(grow)
            self.have += bytes(grow)
        i = off
        while i < end:      # alternates gaps and held runs: bounded by the frame's length
            j = self.have.find(1, i, end)
            j = end if j < 0 else j
            self.data[i:j] = chunk[i - off:j - off]
            if j == end:
                break
            i = self.have.find(0, j, end)
            i = end if i < 0 else i
            if self.data[j:i] != chunk[j - off:i - off]:
                return False
        self.have[off:end] = b"\x01" * len(chunk)
        return True

    def client_hello(self) -> tuple[int, bytes]:
        """(OK, message) once the stream holds the whole first handshake message."""
        if len(self.have) < 4 or self.have.find(0, 0, 4) >= 0:
            return NEED_MORE, b""
        if self.data[0] != 1:
            return NOT_QUIC, b""        # not a ClientHello: a server's Initial, or no TLS
        total = 4 + int.from_bytes(self.data[1:4], "big")
        if total > MAX_CRYPTO:
            return MALFORMED, b""
        if len(self.have) < total or self.have.find(0, 0, total) >= 0:
            return NEED_MORE, b""
        return OK, bytes(self.data[:total])


class QuicInitials:
    """Per-flow CRYPTO reassembly for QUIC Initials, bounded: at most max_flows flows in
    progress (oldest dropped first), at most MAX_CRYPTO (16 KiB) of CRYPTO data per flow,
    at most max_packets Initial packets per flow.

    Flow state is released when feed returns OK.  A flow that breaks a bound, sends
    contradicting CRYPTO data, or whose stream does not start with a ClientHello keeps
    returning that failure (MALFORMED or NOT_QUIC) until forget().  Keys come from the
    DCID of the flow's first decrypted Initial; a later Initial that only decrypts with
    its own DCID (the client obeyed a Retry) adds that DCID, up to MAX_DCIDS.
    Not thread-safe.
    """

    OK, NEED_MORE, NOT_QUIC, MALFORMED = OK, NEED_MORE, NOT_QUIC, MALFORMED

    def __init__(self, max_flows: int = 4096, max_packets: int = 8) -> None:
        self.max_flows = max(1, max_flows)
        self.max_packets = max_packets
        self._flows: dict[int, _Flow] = {}      # insertion order is age
        self._counts = dict.fromkeys(
            ("datagrams", "initials", "decrypted", "undecryptable", "bad_frames",
             "short_datagrams", "conflicts", "too_large", "over_budget", "not_client_hello",
             "completed", "evicted"), 0)

    def feed(self, flow_id: int, datagram: bytes) -> tuple[int, bytes]:
        """One UDP payload from the client of a QUIC flow.  Returns (status, client_hello_bytes):
        status NEED_MORE (not yet a contiguous ClientHello: more Initials needed), OK (the
        ClientHello handshake message, complete, from offset 0 of the CRYPTO stream),
        NOT_QUIC (not a v1/v2 long-header Initial from a client), MALFORMED (decryption or
        frame parse failed: a corrupted Initial yields no name and no exception)."""
        c = self._counts
        c["datagrams"] += 1
        d = bytes(datagram)
        flow = self._flows.get(flow_id)
        if flow is not None and flow.final is not None:
            return flow.final, b""
        walked = _walk(d)
        if walked is None:
            return (NOT_QUIC if flow is None else NEED_MORE), b""
        initials, bad = walked
        if not initials:
            return (MALFORMED if bad else NOT_QUIC if flow is None else NEED_MORE), b""
        if len(d) < MIN_DATAGRAM:
            c["short_datagrams"] += 1
            return MALFORMED, b""
        if flow is None:    # state from the first Initial tried, so max_packets bounds the work
            flow = _Flow()
            self._insert(flow_id, flow)
        status = MALFORMED if bad else NEED_MORE
        for h in initials:
            flow.packets += 1
            c["initials"] += 1
            if flow.packets > self.max_packets:
                c["over_budget"] += 1
                return self._fail(flow, MALFORMED)
            frames = self._decrypt(flow, d, h)
            if frames is None:
                status = MALFORMED
                continue
            for off, chunk in frames:
                if off + len(chunk) > MAX_CRYPTO:
                    c["too_large"] += 1
                    return self._fail(flow, MALFORMED)
                if not flow.add(off, chunk):
                    c["conflicts"] += 1
                    return self._fail(flow, MALFORMED)
        hello_status, hello = flow.client_hello()
        if hello_status == OK:
            c["completed"] += 1
            del self._flows[flow_id]
            return OK, hello
        if hello_status != NEED_MORE:
            c["too_large" if hello_status == MALFORMED else "not_client_hello"] += 1
            return self._fail(flow, hello_status)
        return status, b""

    def forget(self, flow_id: int) -> None:
        """Drop the flow's state, if any."""
        self._flows.pop(flow_id, None)

    def counters(self) -> dict[str, int]:
        """Event counts since construction, and the flows held now."""
        return {**self._counts, "flows": len(self._flows)}

    def _decrypt(self, flow: _Flow, d: bytes, h: _Initial) -> list[tuple[int, bytes]] | None:
        """CRYPTO frames of one Initial, trying the flow's DCIDs, then the packet's own."""
        c = self._counts
        tried = flow.dcids if h.dcid in flow.dcids else [*flow.dcids, h.dcid]
        for dcid in tried:
            opened = _open(d, h, _keys(h.version, dcid), flow.largest)
            if opened is not None:
                break
        else:
            c["undecryptable"] += 1
            return None
        c["decrypted"] += 1
        pn, payload = opened
        frames = _crypto_frames(payload)
        if frames is None:
            c["bad_frames"] += 1
            return None
        if dcid not in flow.dcids and len(flow.dcids) < MAX_DCIDS:
            flow.dcids.append(dcid)
        flow.largest = max(flow.largest, pn)
        return frames

    def _insert(self, flow_id: int, flow: _Flow) -> None:
        while len(self._flows) >= self.max_flows:
            del self._flows[next(iter(self._flows))]
            self._counts["evicted"] += 1
        self._flows[flow_id] = flow

    @staticmethod
    def _fail(flow: _Flow, status: int) -> tuple[int, bytes]:
        flow.final = status
        flow.data, flow.have = bytearray(), bytearray()     # a tombstone keeps no stream
        return status, b""
