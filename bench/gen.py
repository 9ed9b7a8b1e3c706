"""Seeded GWLB traffic at benchmark scale: the generator behind `egressd gen` (issue 8).

    counts = generate("egress.pcap", flows=100_000, packets_per_flow=10, sizes="imix")

Every frame is what AWS Gateway Load Balancer hands a target, byte for byte the shape of
pcaps/make_samples.gwlb_frame: Ethernet / IPv4 (TTL 255, ID 0, no DF) / UDP to 6081 with
a valid checksum / GENEVE with the three class-0x0108 options (endpoint id, attachment
id, flow cookie) / the inner IPv4 or IPv6 packet.  Inside are whole conversations:

* tls, http: a TCP connection: SYN, SYN-ACK, ACK; the client's first message (a real
  ClientHello from Python's ssl naming the flow's server, cut into 2-4 segments for
  `split_client_hello_share` of the TLS flows; or an HTTP/1.1 GET with Host); the
  server's data (a TLS ServerHello and ChangeCipherSpec, then application-data records;
  or an HTTP response with Content-Length) in segments sized by `sizes`, the client
  ACKing every second one; FIN/ACK, FIN/ACK, ACK.  The data fills the flow up to
  `packets_per_flow` packets; a flow never has fewer than its 7 to 10 handshake,
  first-message and closing packets.
* dns: a stub resolver's queries and answers on one socket: A, and AAAA too when
  `packets_per_flow` >= 4 (as glibc sends both), answered with the name's server.
* quic: a client Initial (QUIC v1, 1200 bytes, the ClientHello aioquic writes, made
  deterministic and sealed per flow with its own connection ids), then short-header
  datagrams, server and client in turn, sized by `sizes`: `packets_per_flow` datagrams.
  Without aioquic the Initial is one more short-header datagram: no name in the flow.
* udp: `packets_per_flow` WireGuard transport-data datagrams, both ways in turn (a
  tunnel: no name in it).
* icmp: `packets_per_flow` // 2 (at least one) echo request/reply pairs (ICMPv6 for
  IPv6 flows).

Flows start at random times spread so that the capture averages a packet per
microsecond; within a flow the two directions alternate with half the flow's round trip
between them and a few microseconds inside a burst.  Timestamps increase strictly.
`out_of_order_share` of the TCP flows that have two same-direction data segments in a
row get one such pair swapped (tshark calls the second one out of order).

How it is fast: the handful of distinct byte strings (one ClientHello per name length,
one QUIC ClientHello per name length, the server flight, the random payload pool) are
made once in Python; a numba kernel lays out every packet of every flow (role, payload
length, sequence numbers, IP id, timestamp), numpy sorts them by time, and a second
kernel writes the pcap records chunk by chunk, filling per-flow fields and computing
every checksum (in a worker thread, while this one writes the file).  Only QUIC
Initials are sealed in Python, ~25 us per QUIC flow.  Flows are scheduled about a
million packets at a time, so memory does not grow with the capture's length.

The same arguments always give the same bytes: every random choice comes from `seed`
(the ClientHello randoms, session ids and key shares that ssl and aioquic draw are
overwritten with seeded bytes).
"""
from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from numba import njit

from egressd.bench.tls import random_name, ssl_client_hello
from egressd.flowspec import is_address
from egressd.engine.quic import VERSION_1, QuicInitials, protect_client_initial
from egressd.engine.wire import ones_sum, put_u32le

KINDS = ("tls", "http", "dns", "quic", "udp", "icmp")
K_TLS, K_HTTP, K_DNS, K_QUIC, K_UDP, K_ICMP = range(6)
DEFAULT_MIX = {"tls": 0.55, "http": 0.05, "dns": 0.25, "quic": 0.08, "udp": 0.04, "icmp": 0.03}
# Inner IP packet lengths and weights of the packets that carry bulk data (server
# segments, QUIC and UDP datagrams, echo payloads); handshakes, ACKs, ClientHellos and
# DNS have their natural sizes.  IMIX is the simple 7:4:1 mix, with 64 rather than 40
# bytes so that a TCP segment still has payload; jumbo is GWLB's 8500-byte inner MTU.
SIZES = {"imix": ((64, 7), (576, 4), (1500, 1)), "64": ((64, 1),), "1500": ((1500, 1),),
         "jumbo": ((8500, 1),)}
ALPN = ["h2", "http/1.1"]

# --- addressing (documentation and benchmarking ranges only) ------------------------------
GWLB_MAC = bytes.fromhex("02000a000a4a")
APPLIANCE_MAC = bytes.fromhex("02000a000840")
GWLB_IP = bytes([10, 0, 10, 74])
APPLIANCE_IP = bytes([10, 0, 8, 64])
# Clients: 10.0.0.0/8 or fd00:0:0:10::/64, host number from the flow number; ports
# 61000-65535, where this tshark registers no UDP dissector (a dissector on the client's
# port would read WireGuard or QUIC as its own protocol and call it malformed).
CLIENT_PORT0, CLIENT_PORTS = 61000, 4536
CLIENT6_PREFIX = bytes.fromhex("fd000000000000100000")           # + 6 bytes of host
# Servers: 198.18.0.0/15 (RFC 2544) or 2001:db8:0:443::/64; a named flow goes to its
# name's server, which is also what DNS answers for the name.
SERVER4_HOSTS = (1 << 17) - 2
SERVER6_PREFIX = bytes.fromhex("20010db8000004430000")
RESOLVER4 = bytes([198, 51, 100, 53])
RESOLVER6 = bytes.fromhex("20010db8000000000000000000000053")
WIREGUARD_PORT = 51820
EPOCH_NS = 1_700_000_000 * 10**9

ETH, OUTER = 14, 82                 # Ethernet; everything before the inner packet
RECORD = 16                         # pcap record header
MAX_INNER = 8500                    # GWLB's MTU towards its targets
QUIC_DATAGRAM = 1200                # RFC 9000 14.1: a client pads its first Initial to 1200
QUIC_MIN = 1 + 8 + 20               # short header: flags, DCID, room for the pn + HP sample
WG_MIN = 32                         # WireGuard transport data: 16-byte header + AEAD tag
TLS_RECORD = 16384 + 5              # application data records as servers cut them
POOL = 1 << 20                      # random payload bytes; the pool holds POOL + MAX_INNER
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)   # ns, Ethernet
CHUNK_BYTES = 32 << 20              # pcap bytes written per kernel call
MAX_RECORD = RECORD + OUTER + MAX_INNER

# Packet roles.  Direction, transport and header length follow from the role.
(R_SYN, R_SYNACK, R_ACK, R_HELLO, R_DATA, R_DATA_PSH, R_FIN_C, R_FIN_S, R_DNS_Q, R_DNS_R,
 R_INITIAL, R_QUIC_C, R_QUIC_S, R_UDP_C, R_UDP_S, R_ECHO, R_ECHO_REPLY) = range(17)
_SERVER = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1], np.uint8)
_L4 = np.array([6, 6, 6, 6, 6, 6, 6, 6, 17, 17, 17, 17, 17, 17, 17, 1, 1], np.uint8)
_TCP_FLAGS = np.array([0x02, 0x12, 0x10, 0x18, 0x10, 0x18, 0x11, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                      np.uint8)
# ICMP echo: (request, reply) types for IPv4 and ICMPv6
_ECHO_TYPE = np.array([[8, 0], [128, 129]], np.uint8)

HTTP_PRE = b"GET / HTTP/1.1\r\nHost: "
HTTP_POST = b"\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: "
_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


# --- the plan: one row per flow -------------------------------------------------------------

@dataclass
class Plan:
    """What every flow is, drawn from the seed; `generate` writes it out packet by packet.

    Arrays have one entry per flow.  `name` indexes `names` (-1: a udp or icmp flow);
    `server` is the server's host number (a named flow's is its name's index);
    `pieces` is how many segments carry the ClientHello (1 unless split);
    `out_of_order` marks the flows with one adjacent pair of segments swapped.
    """

    names: list[str]
    packets_per_flow: int
    sizes: str
    seed: int
    kind: np.ndarray
    name: np.ndarray
    v6: np.ndarray
    endpoint: np.ndarray
    cookie: np.ndarray
    gwlb_port: np.ndarray
    client_port: np.ndarray
    server: np.ndarray
    pieces: np.ndarray
    out_of_order: np.ndarray
    start: np.ndarray
    rtt: np.ndarray
    isn: np.ndarray            # (flows, 2): client, server
    ip_id: np.ndarray          # (flows, 2)
    salt: np.ndarray           # per-flow seed of the kernels' draws
    cid: np.ndarray            # (flows, 2): QUIC destination and source connection ids
    endpoint_id: np.ndarray
    attachment_id: np.ndarray

    @property
    def flows(self) -> int:
        return len(self.kind)

    def client_ip(self, i: int) -> str:
        host = i // CLIENT_PORTS + 1
        if self.v6[i]:
            return str(ipaddress.IPv6Address(CLIENT6_PREFIX + host.to_bytes(6, "big")))
        return str(ipaddress.IPv4Address((10 << 24) | host))

    def server_ip(self, i: int) -> str:
        if self.kind[i] == K_DNS:
            return str(ipaddress.ip_address(RESOLVER6 if self.v6[i] else RESOLVER4))
        return server_address(int(self.server[i]), bool(self.v6[i]))

    def flow_name(self, i: int) -> str | None:
        return self.names[self.name[i]] if self.name[i] >= 0 else None


def server_address(host: int, v6: bool) -> str:
    """Server number `host`'s address: a named flow's server, and what DNS answers for
    the name, is the name's index in the names list."""
    if v6:
        return str(ipaddress.IPv6Address(SERVER6_PREFIX + (host + 1).to_bytes(6, "big")))
    return str(ipaddress.IPv4Address((198 << 24 | 18 << 16) + host % SERVER4_HOSTS + 1))


class GenError(ValueError):
    """An argument the generator cannot use: `param` names it, `reason` says why."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param, self.reason = param, reason


def check_name(name: str) -> None:
    """GenError unless `name` can be an SNI, Host and DNS query name."""
    if not isinstance(name, str) or len(name) > 253 or not _NAME.fullmatch(name) or is_address(name):
        raise GenError("names", f"not a host name (ASCII labels of 1-63 letters, digits or "
                                f"hyphens; IDNs in A-label form): {name!r}")


def _check_names(names: list[str]) -> list[str]:
    if not names:
        raise GenError("names", "must not be empty")
    for n in names:
        check_name(n)
    return list(names)


def plan(*, flows: int, packets_per_flow: int, mix: dict[str, float] | None = None,
         names: list[str] | None = None, ipv6_share: float = 0.2, sizes: str = "imix",
         endpoints: int = 3, split_client_hello_share: float = 0.1,
         out_of_order_share: float = 0.0, seed: int = 0) -> Plan:
    """Draw every flow's kind, name, addresses, GWLB fields and timing (see the module
    docstring); `generate` takes the same arguments."""
    mix = DEFAULT_MIX if mix is None else mix
    if set(mix) - set(KINDS) or any(not w >= 0 for w in mix.values()) or not sum(mix.values()) > 0:
        raise GenError("mix", f"non-negative weights of {', '.join(KINDS)}, not all zero")
    if sizes not in SIZES:
        raise GenError("sizes", f"one of {', '.join(SIZES)}")
    if not 1 <= flows <= CLIENT_PORTS * ((1 << 24) - 2):
        raise GenError("flows", f"1 to {CLIENT_PORTS * ((1 << 24) - 2)}")
    if not 1 <= packets_per_flow <= 50_000:
        raise GenError("packets_per_flow", "1 to 50000")
    if not 1 <= endpoints <= 255:
        raise GenError("endpoints", "1 to 255")
    for param, share in (("ipv6_share", ipv6_share), ("split_client_hello_share",
                         split_client_hello_share), ("out_of_order_share", out_of_order_share)):
        if not 0 <= share <= 1:
            raise GenError(param, "a share between 0 and 1")
    rng = np.random.default_rng(seed)
    names = _check_names([random_name(rng) for _ in range(1000)] if names is None else names)
    weights = np.array([mix.get(k, 0.0) for k in KINDS], np.float64)
    kind = rng.choice(len(KINDS), flows, p=weights / weights.sum()).astype(np.uint8)
    named = kind <= K_QUIC
    name = np.where(named, rng.integers(0, len(names), flows), -1).astype(np.int32)
    server = np.where(named, name, rng.integers(0, SERVER4_HOSTS, flows)).astype(np.uint32)
    split = (kind == K_TLS) & (rng.random(flows) < split_client_hello_share)
    pieces = np.where(split, rng.integers(2, 5, flows), 1).astype(np.uint8)
    # a pair to swap needs two client pieces or two server segments in a row
    data_phase = np.maximum(packets_per_flow - 6 - pieces.astype(np.int64), 0)
    can_swap = (kind <= K_HTTP) & ((pieces >= 2) | (data_phase >= 2))
    spread = flows * max(packets_per_flow, 2) * 1000   # ~1 packet per microsecond
    u32 = (1 << 32)
    return Plan(
        names=names, packets_per_flow=packets_per_flow, sizes=sizes, seed=seed, kind=kind,
        name=name, v6=rng.random(flows) < ipv6_share,
        endpoint=rng.integers(0, endpoints, flows).astype(np.uint8),
        cookie=rng.integers(1, u32, flows, dtype=np.uint64).astype(np.uint32),
        gwlb_port=rng.integers(40000, 65001, flows).astype(np.uint16),
        client_port=(CLIENT_PORT0 + np.arange(flows) % CLIENT_PORTS).astype(np.uint16),
        server=server, pieces=pieces, out_of_order=can_swap & (rng.random(flows) < out_of_order_share),
        # distinct start times, in flow order: `write` schedules flows in start order
        start=np.sort(rng.integers(0, spread, flows)) + np.arange(flows),
        rtt=rng.integers(200_000, 2_000_000, flows),
        isn=rng.integers(0, u32, (flows, 2), dtype=np.uint64).astype(np.uint32),
        ip_id=rng.integers(0, 1 << 16, (flows, 2)).astype(np.uint16),
        salt=rng.integers(0, 1 << 63, flows, dtype=np.uint64),
        cid=rng.integers(0, 1 << 63, (flows, 2), dtype=np.uint64),
        endpoint_id=rng.integers(1 << 56, 1 << 63, endpoints, dtype=np.uint64),
        attachment_id=rng.integers(1 << 40, 1 << 48, endpoints, dtype=np.uint64),
    )


# --- templates --------------------------------------------------------------------------------

def _hello_fields(msg: bytes) -> dict[str, list[tuple[int, int]]]:
    """(offset, length) in a ClientHello handshake message of the bytes that differ
    from one connection to the next, and of the server name."""
    def u16(p: int) -> int:
        return int.from_bytes(msg[p:p + 2], "big")

    assert msg[0] == 1, "not a ClientHello"
    p = 6
    out: dict[str, list[tuple[int, int]]] = {"random": [(p, 32)], "key_share": []}
    p += 32
    out["session_id"] = [(p + 1, msg[p])]
    p += 1 + msg[p]
    p += 2 + u16(p)                     # cipher suites
    p += 1 + msg[p]                     # compression methods
    end = p + 2 + u16(p)
    p += 2
    while p < end:
        ext, n, body = u16(p), u16(p + 2), p + 4
        if ext == 0x0000:               # server_name: list length, type, name length, name
            out["sni"] = [(body + 5, u16(body + 3))]
        elif ext == 0x0033:             # key_share: list length, then (group, length, key)
            q = body + 2
            while q < body + n:
                group, k = u16(q), u16(q + 2)
                ec = 0x17 <= group <= 0x19    # keep the EC point format byte
                out["key_share"].append((q + 4 + ec, k - ec))
                q += 4 + k
        elif ext == 0x0039:             # QUIC transport parameters: (id, length, value)
            q = body
            while q < body + n:
                param = []              # id, length: variable-length integers
                for _ in range(2):
                    size = 1 << (msg[q] >> 6)
                    param.append(int.from_bytes(msg[q:q + size], "big") & ((1 << (8 * size - 2)) - 1))
                    q += size
                if param[0] == 0x0F:    # initial_source_connection_id
                    out["scid"] = [(q, param[1])]
                q += param[1]
        p = body + n
    assert "sni" in out, "ClientHello without a server name"
    return out


def _fix(msg: bytearray, spans: list[tuple[int, int]], rng: np.random.Generator) -> None:
    """Overwrite the (offset, length) spans of msg with seeded bytes."""
    for at, n in spans:
        msg[at:at + n] = rng.bytes(n)


@dataclass
class _Hellos:
    """ClientHellos by name length: blob[off[t]:off[t]+size[t]] names a placeholder of
    that length at sni[t]; by_len[L] is t for names of L bytes (-1: none)."""

    blob: np.ndarray
    off: np.ndarray
    size: np.ndarray
    sni: np.ndarray
    by_len: np.ndarray


def _tls_hellos(names: list[str], lengths: set[int], rng: np.random.Generator) -> _Hellos:
    """One real ClientHello (Python's ssl) per name length, its randomness from `rng`;
    the per-flow client random is written by the kernel."""
    first = {}
    for n in names:
        first.setdefault(len(n), n)
    parts, sni, by_len = [], [], np.full(254, -1, np.int32)
    for t, length in enumerate(sorted(lengths)):
        record = bytearray(ssl_client_hello(first[length], alpn=ALPN))
        assert record[0] == 22 and int.from_bytes(record[3:5], "big") == len(record) - 5, \
            "expected one handshake record"
        fields = _hello_fields(bytes(record[5:]))
        for key in ("session_id", "key_share"):
            _fix(record, [(5 + at, n) for at, n in fields[key]], rng)
        (at, n), = fields["sni"]
        assert record[5 + at:5 + at + n] == first[length].encode(), "SNI not where expected"
        sni.append(5 + at)
        parts.append(bytes(record))
        by_len[length] = t
    return _blobs(parts, sni, by_len)


def _blobs(parts: list[bytes], sni: list[int], by_len: np.ndarray) -> _Hellos:
    size = np.array([len(p) for p in parts], np.int64)
    off = np.zeros(len(parts), np.int64)
    np.cumsum(size[:-1], out=off[1:])
    blob = np.frombuffer(b"".join(parts) or b"\0", np.uint8).copy()
    return _Hellos(blob, off, size, np.array(sni, np.int64), by_len)


def _server_flight(rng: np.random.Generator) -> bytes:
    """A TLS 1.3 ServerHello (X25519 key share) and ChangeCipherSpec, as the server's first
    bytes; application-data records follow."""
    ext = (struct.pack("!HHH", 0x002B, 2, 0x0304)
           + struct.pack("!HHHH", 0x0033, 36, 0x001D, 32) + rng.bytes(32))
    body = (b"\x03\x03" + rng.bytes(32) + b"\x20" + rng.bytes(32) + struct.pack("!HB", 0x1301, 0)
            + struct.pack("!H", len(ext)) + ext)
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", 22, 0x0303, len(hs)) + hs + bytes([20, 3, 3, 0, 1, 1])


def _quic_hellos(names: list[str], lengths: set[int], rng: np.random.Generator) -> dict | None:
    """{name length: (ClientHello handshake message, its fields)} from aioquic's client,
    key shares from `rng`; None without aioquic."""
    try:
        import ssl

        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection
    except ImportError:
        return None
    first = {}
    for n in names:
        first.setdefault(len(n), n)
    out = {}
    for length in sorted(lengths):
        conn = QuicConnection(configuration=QuicConfiguration(
            is_client=True, server_name=first[length], alpn_protocols=["h3"],
            verify_mode=ssl.CERT_NONE))
        conn.connect(("192.0.2.1", 443), now=0.0)
        status, hello = QuicInitials().feed(0, conn.datagrams_to_send(0.0)[0][0])
        assert status == QuicInitials.OK, "aioquic's first datagram holds no whole ClientHello"
        msg = bytearray(hello)
        fields = _hello_fields(hello)
        (at, n), = fields["sni"]
        assert hello[at:at + n] == first[length].encode(), "SNI not where expected"
        _fix(msg, fields["session_id"] + fields["key_share"], rng)
        out[length] = (msg, fields)
    return out


def _initial_plaintext(hello: bytes, fields: dict) -> tuple[bytearray, dict[str, int]]:
    """The payload of a client Initial carrying `hello`: a CRYPTO frame, then PADDING up
    to a QUIC_DATAGRAM-byte datagram; and where its per-flow bytes sit."""
    frames = b"\x06\x00" + (0x4000 | len(hello)).to_bytes(2, "big") + hello
    if len(frames) > _INITIAL_PAYLOAD:
        raise GenError("names", "a name too long for a QUIC ClientHello in one Initial")
    at = {key: len(frames) - len(hello) + fields[key][0][0] for key in ("sni", "random", "scid")}
    assert fields["scid"][0][1] == 8, "aioquic's source connection id is not 8 bytes"
    return bytearray(frames + bytes(_INITIAL_PAYLOAD - len(frames))), at


# A client Initial (RFC 9000 17.2.2, RFC 9001 5): first byte (packet number length 1),
# version, DCID and SCID of 8 bytes, no token, a 2-byte Length, packet number 0.
_INITIAL_HEAD = 1 + 4 + 1 + 8 + 1 + 8 + 1 + 2 + 1
_INITIAL_PAYLOAD = QUIC_DATAGRAM - _INITIAL_HEAD - 16     # less the AEAD tag


def _quic_initials(p: Plan, rows: np.ndarray, plain: dict, off: np.ndarray) -> np.ndarray:
    """The client Initial datagrams of QUIC flows `rows`, end to end, each sealed with
    keys from its own DCID; off[row] is set to its datagram's offset.  Python, ~25 us a
    flow: the one per-flow cost outside the kernels.  `plain`: _initial_plaintext by
    name length."""
    names = [n.encode() for n in p.names]
    randoms = np.zeros((len(rows), 32), np.uint8)
    _client_randoms(p.salt[rows], randoms)
    randoms = randoms.tobytes()
    cids = p.cid[rows].astype(">u8").tobytes()          # DCID, SCID of each flow
    head = bytearray(b"\xc0" + VERSION_1.to_bytes(4, "big") + b"\x08" + bytes(8) + b"\x08" + bytes(8)
                     + b"\x00" + (0x4000 | (1 + _INITIAL_PAYLOAD + 16)).to_bytes(2, "big") + b"\x00")
    blob = bytearray(QUIC_DATAGRAM * len(rows))
    for j, i in enumerate(rows):
        name = names[p.name[i]]
        template, at = plain[len(name)]
        payload = template[:]
        payload[at["sni"]:at["sni"] + len(name)] = name
        payload[at["random"]:at["random"] + 32] = randoms[32 * j:32 * j + 32]
        dcid, scid = cids[16 * j:16 * j + 8], cids[16 * j + 8:16 * j + 16]
        payload[at["scid"]:at["scid"] + 8] = scid
        head[6:14] = dcid
        head[15:23] = scid
        o = QUIC_DATAGRAM * j
        blob[o:o + QUIC_DATAGRAM] = protect_client_initial(VERSION_1, dcid, bytes(head), 1, payload)
    off[rows] = np.arange(len(rows)) * QUIC_DATAGRAM
    return np.frombuffer(blob or bytearray(1), np.uint8)


def _dns_names(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every name in DNS wire form, end to end: (blob, offsets)."""
    wire = [b"".join(bytes([len(label)]) + label.encode() for label in n.split(".")) + b"\0"
            for n in names]
    off = np.zeros(len(names) + 1, np.int64)
    np.cumsum([len(w) for w in wire], out=off[1:])
    return np.frombuffer(b"".join(wire), np.uint8).copy(), off


# --- kernels ----------------------------------------------------------------------------------

# What a kernel draws a random number for: each purpose has its own stream per flow.
D_SIZE, D_GAP, D_CUT, D_SWAP, D_RANDOM, D_POOL, D_DNS_ID = range(7)


@njit(cache=True, nogil=True)
def _mix(x):
    """splitmix64's finalizer."""
    x = np.uint64(x) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, nogil=True)
def _draw(salt, purpose, k):
    """The k-th random 64-bit number of a flow (its salt) for `purpose`: a pure function,
    so a packet's bytes do not depend on which chunk or order writes it."""
    return _mix(_mix(np.uint64(salt) ^ (np.uint64(purpose) << np.uint64(56))) + np.uint64(k))


@njit(cache=True, nogil=True)
def _put16(buf, p, v):
    buf[p] = (v >> 8) & 0xFF
    buf[p + 1] = v & 0xFF


@njit(cache=True, nogil=True)
def _put32(buf, p, v):
    v = np.uint32(v & 0xFFFFFFFF)
    buf[p] = v >> 24
    buf[p + 1] = (v >> 16) & 0xFF
    buf[p + 2] = (v >> 8) & 0xFF
    buf[p + 3] = v & 0xFF


@njit(cache=True, nogil=True)
def _put64(buf, p, v):
    _put32(buf, p, np.uint64(v) >> np.uint64(32))
    _put32(buf, p + 4, np.uint64(v) & np.uint64(0xFFFFFFFF))


@njit(cache=True, nogil=True)
def _fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@njit(cache=True, nogil=True)
def _bulk(salt, k, size_len, size_cut, overhead, least):
    """Payload bytes of bulk packet k of a flow: an inner length drawn from the size
    distribution, less the headers, at least `least`."""
    u = np.int64(_draw(salt, D_SIZE, k) % np.uint64(size_cut[-1]))
    j = 0
    while size_cut[j] <= u:
        j += 1
    return max(size_len[j] - overhead, least)


@njit(cache=True, nogil=True)
def _cuts(salt, total, pieces, out):
    """Sorted distinct cut points 0 < c < total splitting a message into `pieces`;
    out[0] = 0, out[pieces] = total."""
    out[0] = 0
    out[pieces] = total
    n = 1
    for t in range(64):
        if n == pieces:
            break
        c = 1 + np.int64(_draw(salt, D_CUT, t) % np.uint64(total - 1))
        j = n
        dup = False
        for q in range(1, n):
            dup |= out[q] == c
        if dup:
            continue
        while j > 1 and out[j - 1] > c:   # insertion sort: pieces <= 4
            out[j] = out[j - 1]
            j -= 1
        out[j] = c
        n += 1
    for q in range(n, pieces):            # (never in practice) fill in evenly
        out[q] = total * q // pieces
    return n == pieces


@njit(cache=True, nogil=True)
def _schedule(f0, first, kind, v6, pieces, swap, start, rtt, isn, ip_id, salt, msg_len,
              size_len, size_cut, min_tls, min_http, p_flow, p_ts, p_role, p_plen, p_off,
              p_seq, p_ack, p_ipid, p_rlen, f_total):
    """Every packet of flows f0, f0+1, ...: flow f0+i gets rows first[i]:first[i+1] of
    the p_* columns, in its own order.  f_total gets the bytes a TCP server sends."""
    cuts = np.zeros(5, np.int64)
    sent = np.zeros(2, np.int64)        # per direction: sequence space used, packets sent
    count = np.zeros(2, np.int64)
    for i in range(first.shape[0] - 1):
        f = f0 + i
        a = first[i]
        e = first[i + 1]
        if a < 0 or e > p_role.shape[0] or e <= a or f >= kind.shape[0]:
            return False
        k = kind[f]
        s = salt[f]
        iph = 40 if v6[f] else 20
        total = 0
        if k == K_TLS or k == K_HTTP:
            m = np.int64(pieces[f])
            cm = msg_len[f]
            if m > 1 and not _cuts(s, cm, m, cuts):
                return False
            p_role[a] = R_SYN
            p_role[a + 1] = R_SYNACK
            p_role[a + 2] = R_ACK
            for j in range(m):
                p_role[a + 3 + j] = R_HELLO
                p_plen[a + 3 + j] = cm if m == 1 else cuts[j + 1] - cuts[j]
            data = e - a - 6 - m
            last = -1
            for r in range(data):
                q = a + 3 + m + r
                if r % 3 == 2:          # the client ACKs every second segment
                    p_role[q] = R_ACK
                else:
                    p_role[q] = R_DATA
                    p_plen[q] = _bulk(s, r, size_len, size_cut, iph + 20, 1)
                    total += p_plen[q]
                    last = q
            if last >= 0:
                p_role[last] = R_DATA_PSH
                need = min_tls if k == K_TLS else min_http
                if total < need:        # room for the server's first record or header
                    p_plen[last] += need - total
                    total = need
            p_role[e - 3] = R_FIN_C
            p_role[e - 2] = R_FIN_S
            p_role[e - 1] = R_ACK
        elif k == K_DNS:
            n = (e - a) // 2
            for j in range(n):
                p_role[a + j] = R_DNS_Q
                p_role[a + n + j] = R_DNS_R
                p_off[a + j] = j
                p_off[a + n + j] = j
                q = 16 + msg_len[f]     # header, name, type, class
                p_plen[a + j] = q
                p_plen[a + n + j] = q + 12 + (4 if j == 0 else 16)
        elif k == K_QUIC or k == K_UDP:
            for j in range(e - a):
                c2s = j % 2 == 0
                if k == K_QUIC:
                    p_role[a + j] = R_INITIAL if j == 0 else (R_QUIC_C if c2s else R_QUIC_S)
                    least = QUIC_MIN
                else:
                    p_role[a + j] = R_UDP_C if c2s else R_UDP_S
                    least = WG_MIN
                p_plen[a + j] = (QUIC_DATAGRAM if j == 0 and k == K_QUIC else
                                 _bulk(s, j, size_len, size_cut, iph + 8, least))
                p_off[a + j] = j
        else:
            for j in range(e - a):
                p_role[a + j] = R_ECHO if j % 2 == 0 else R_ECHO_REPLY
                p_off[a + j] = j // 2
                p_plen[a + j] = p_plen[a + j - 1] if j % 2 else _bulk(s, j, size_len, size_cut, iph + 8, 0)
        f_total[f] = total
        # sequence numbers, IP ids, timestamps, record lengths along the flow
        sent[:] = 0
        count[:] = 0
        t = start[f]
        prev = 0
        for q in range(a, e):
            role = p_role[q]
            d = _SERVER[role]
            if q > a:
                # half a round trip when the direction turns, 2-5 us within a burst
                t += rtt[f] // 2 if d != prev else 2000 + np.int64(_draw(s, D_GAP, q - a) % np.uint64(3000))
            prev = d
            p_flow[q] = f
            p_ts[q] = t
            p_ipid[q] = (np.int64(ip_id[f, d]) + count[d]) & 0xFFFF
            count[d] += 1
            proto = _L4[role]
            if proto == 6:
                fl = _TCP_FLAGS[role]
                p_seq[q] = (np.int64(isn[f, d]) + sent[d]) & 0xFFFFFFFF
                p_ack[q] = (np.int64(isn[f, 1 - d]) + sent[1 - d]) & 0xFFFFFFFF if fl & 0x10 else 0
                p_off[q] = sent[d] - 1  # offset of the payload in the byte stream
                sent[d] += p_plen[q] + (1 if fl & 0x03 else 0)   # SYN and FIN take one
                l4 = 24 if fl & 0x02 else 20
            else:
                l4 = 8
            p_rlen[q] = RECORD + OUTER + iph + l4 + p_plen[q]
        if swap[f]:                     # one adjacent same-direction data pair, by lot
            m = np.int64(pieces[f])
            data = e - a - 6 - m
            pairs_c = m - 1
            pairs = pairs_c + (data + 1) // 3
            if pairs < 1:
                return False
            x = np.int64(_draw(s, D_SWAP, 0) % np.uint64(pairs))
            q = a + 3 + x if x < pairs_c else a + 3 + m + 3 * (x - pairs_c)
            tq = p_ts[q]
            p_ts[q] = p_ts[q + 1]
            p_ts[q + 1] = tq
    return True


@njit(cache=True, nogil=True)
def _copy_pool(out, o, pool, at, n):
    """out[o:o+n] = pool bytes from position `at` (wrapping within POOL)."""
    at = at % POOL
    for x in range(n):
        out[o + x] = pool[at + x]


@njit(cache=True, nogil=True)
def _address(out, p, f, v6, client, server_host, dns):
    """Write a client (host number from the flow) or server address at out[p]."""
    if client:
        host = f // CLIENT_PORTS + 1
        if v6:
            for x in range(10):
                out[p + x] = CLIENT6_PREFIX_A[x]
            _put16(out, p + 10, host >> 32)
            _put32(out, p + 12, host)
        else:
            _put32(out, p, (10 << 24) | host)
    elif dns:
        if v6:
            for x in range(16):
                out[p + x] = RESOLVER6_A[x]
        else:
            for x in range(4):
                out[p + x] = RESOLVER4_A[x]
    else:
        _server_address(out, p, v6, server_host)


@njit(cache=True, nogil=True)
def _server_address(out, p, v6, host):
    if v6:
        for x in range(10):
            out[p + x] = SERVER6_PREFIX_A[x]
        _put16(out, p + 10, (host + 1) >> 32)
        _put32(out, p + 12, host + 1)
    else:
        _put32(out, p, (198 << 24 | 18 << 16) + host % SERVER4_HOSTS + 1)


CLIENT6_PREFIX_A = np.frombuffer(CLIENT6_PREFIX, np.uint8).copy()
SERVER6_PREFIX_A = np.frombuffer(SERVER6_PREFIX, np.uint8).copy()
RESOLVER4_A = np.frombuffer(RESOLVER4, np.uint8).copy()
RESOLVER6_A = np.frombuffer(RESOLVER6, np.uint8).copy()
HTTP_PRE_A = np.frombuffer(HTTP_PRE, np.uint8).copy()
HTTP_POST_A = np.frombuffer(HTTP_POST, np.uint8).copy()
HTTP_RESPONSE_A = np.frombuffer(HTTP_RESPONSE, np.uint8).copy()
# Ethernet, then the outer IPv4 header but for its length and checksum: no DF, ID 0,
# TTL 255, UDP -- what GWLB sends (pcaps/make_samples.outer_ip)
_OUTER_A = np.frombuffer(APPLIANCE_MAC + GWLB_MAC + b"\x08\x00"
                         + bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 255, 17, 0, 0]) + GWLB_IP
                         + APPLIANCE_IP, np.uint8).copy()


@njit(cache=True, nogil=True)
def _client_random(buf, p, salt):
    """The flow's 32-byte ClientHello random at buf[p:] (TLS in the kernel, QUIC in Python)."""
    for w in range(4):
        _put64(buf, p + 8 * w, _draw(salt, D_RANDOM, w))


@njit(cache=True, nogil=True)
def _client_randoms(salt, out):
    for i in range(min(salt.shape[0], out.shape[0])):
        _client_random(out[i], 0, salt[i])


@njit(cache=True, nogil=True)
def _client_message(scratch, kind, name, n0, nl, hello, h_off, h_size, h_sni, by_len, salt):
    """The flow's first client message into scratch[0:]: its length, -1 if it cannot."""
    if kind == K_TLS:
        t = by_len[nl]
        if t < 0 or h_size[t] > scratch.shape[0] or h_sni[t] + nl > h_size[t]:
            return -1
        for x in range(h_size[t]):
            scratch[x] = hello[h_off[t] + x]
        for x in range(nl):
            scratch[h_sni[t] + x] = name[n0 + x]
        _client_random(scratch, 11, salt)  # after record 5 + header 4 + version 2
        return h_size[t]
    size = HTTP_PRE_A.shape[0] + nl + HTTP_POST_A.shape[0]
    if size > scratch.shape[0]:
        return -1
    p = 0
    for x in range(HTTP_PRE_A.shape[0]):
        scratch[p] = HTTP_PRE_A[x]
        p += 1
    for x in range(nl):
        scratch[p] = name[n0 + x]
        p += 1
    for x in range(HTTP_POST_A.shape[0]):
        scratch[p] = HTTP_POST_A[x]
        p += 1
    return size


@njit(cache=True, nogil=True)
def _http_head(scratch, total):
    """The response header for `total` server bytes (Content-Length zero-padded to make
    header + body come out exact) into scratch; its length."""
    base = HTTP_RESPONSE_A.shape[0] + 4
    digits = 1
    while total - base - digits >= 10 ** digits:
        digits += 1
    body = total - base - digits
    for x in range(HTTP_RESPONSE_A.shape[0]):
        scratch[x] = HTTP_RESPONSE_A[x]
    p = HTTP_RESPONSE_A.shape[0]
    for x in range(digits - 1, -1, -1):
        scratch[p + x] = 48 + body % 10
        body //= 10
    p += digits
    scratch[p] = 13
    scratch[p + 1] = 10
    scratch[p + 2] = 13
    scratch[p + 3] = 10
    return p + 4


@njit(cache=True, nogil=True)
def _record(j, n_full, rem):
    """(start, length) of application-data record j in the stream after the flight: full
    records, the last of `rem` bytes; a remainder too short for a record (1-5 bytes) is
    given 6 bytes of the record before it."""
    if 1 <= rem <= 5 and j >= n_full - 1:
        if j == n_full - 1:
            return j * TLS_RECORD, TLS_RECORD - 6
        return j * TLS_RECORD - 6, rem + 6
    if j < n_full:
        return j * TLS_RECORD, TLS_RECORD
    return j * TLS_RECORD, rem


@njit(cache=True, nogil=True)
def _server_data(out, o, at, n, kind, total, flight, scratch, pool, salt):
    """Server stream bytes [at, at+n) of a TCP flow that sends `total` bytes into out[o:]."""
    _copy_pool(out, o, pool, np.int64(_draw(salt, D_POOL, 0) % np.uint64(POOL)) + at, n)
    if kind == K_HTTP:
        h = _http_head(scratch, total)
        for x in range(at, min(at + n, h)):
            out[o + x - at] = scratch[x]
        return
    fl = flight.shape[0]
    for x in range(at, min(at + n, fl)):
        out[o + x - at] = flight[x]
    rest = total - fl
    if at + n <= fl or rest < 6:
        return
    n_full = rest // TLS_RECORD
    rem = rest % TLS_RECORD
    n_rec = n_full + (rem > 0)
    j = max(0, (at - fl) // TLS_RECORD - 1)
    while j < n_rec:
        rs, rl = _record(j, n_full, rem)
        rs += fl
        if rs >= at + n:
            break
        for x in range(5):
            if at <= rs + x < at + n:
                b = 23 if x == 0 else (3 if x < 3 else ((rl - 5) >> 8 if x == 3 else (rl - 5) & 0xFF))
                out[o + rs + x - at] = b
        j += 1


@njit(cache=True, nogil=True)
def _dns(out, o, q, reply, wire, w0, wl, ident, server_host):
    """A query (qtype A for q == 0, else AAAA) or its answer, into out[o:]."""
    _put16(out, o, ident)
    _put16(out, o + 2, 0x8180 if reply else 0x0100)
    _put16(out, o + 4, 1)
    _put16(out, o + 6, 1 if reply else 0)
    _put32(out, o + 8, 0)
    p = o + 12
    for x in range(wl):
        out[p + x] = wire[w0 + x]
    p += wl
    qtype = 1 if q == 0 else 28
    _put16(out, p, qtype)
    _put16(out, p + 2, 1)
    if reply:
        _put16(out, p + 4, 0xC00C)      # the question's name
        _put16(out, p + 6, qtype)
        _put16(out, p + 8, 1)
        _put32(out, p + 10, 300)
        _put16(out, p + 14, 4 if q == 0 else 16)
        _server_address(out, p + 16, q != 0, server_host)


@njit(cache=True, nogil=True)
def _write(out, order, p_flow, p_ts, p_role, p_plen, p_off, p_seq, p_ack, p_ipid,
           p_rlen, kind, v6, endpoint, cookie, gwlb_port, client_port, server, name_idx, salt,
           cid, f_total, quic_off, ep_id, att_id, names, name_off, wire, wire_off,
           hello, h_off, h_size, h_sni, by_len, flight, quic, pool, scratch, mss):
    """The pcap records of packets order[:], end to end, filling `out` exactly; False
    if they would not fit or a template lookup fails."""
    o = 0
    for i in range(order.shape[0]):
        j = order[i]
        rl = np.int64(p_rlen[j])
        if o + rl > out.shape[0]:
            return False
        f = p_flow[j]
        role = p_role[j]
        plen = np.int64(p_plen[j])
        fv6 = v6[f]
        k = kind[f]
        d = _SERVER[role]
        frame = rl - RECORD
        ts = p_ts[j]
        put_u32le(out, o, ts // 1_000_000_000)
        put_u32le(out, o + 4, ts % 1_000_000_000)
        put_u32le(out, o + 8, frame)
        put_u32le(out, o + 12, frame)
        e = o + RECORD
        for x in range(_OUTER_A.shape[0]):
            out[e + x] = _OUTER_A[x]
        ip = e + ETH
        _put16(out, ip + 2, frame - ETH)
        _put16(out, ip + 10, ~ones_sum(out, ip, 20) & 0xFFFF)
        u = ip + 20
        _put16(out, u, gwlb_port[f])
        _put16(out, u + 2, 6081)
        _put16(out, u + 4, frame - ETH - 20)
        _put16(out, u + 6, 0)
        g = u + 8
        out[g] = 8                      # version 0, 8 words of options
        out[g + 1] = 0
        _put16(out, g + 2, 0x86DD if fv6 else 0x0800)
        _put32(out, g + 4, 0)           # VNI 0
        ep = endpoint[f]
        for t in range(3):
            _put16(out, g + 8 + 12 * t, 0x0108)
            out[g + 10 + 12 * t] = t + 1
            out[g + 11 + 12 * t] = 1 if t == 2 else 2
        _put64(out, g + 12, ep_id[ep])
        _put64(out, g + 24, att_id[ep])
        _put32(out, g + 36, cookie[f])
        # inner IP header
        q = g + 40
        proto = _L4[role]
        if fv6 and proto == 1:
            proto = 58
        iph = 40 if fv6 else 20
        inner_len = frame - OUTER
        srv = server[f]
        if fv6:
            _put32(out, q, 0x60000000)
            _put16(out, q + 4, inner_len - 40)
            out[q + 6] = proto
            out[q + 7] = 64
            _address(out, q + 8, f, True, d == 0, srv, k == K_DNS)
            _address(out, q + 24, f, True, d == 1, srv, k == K_DNS)
        else:
            out[q] = 0x45
            out[q + 1] = 0
            _put16(out, q + 2, inner_len)
            _put16(out, q + 4, p_ipid[j])
            _put16(out, q + 6, 0x4000)  # DF, as Linux sends
            out[q + 8] = 64
            out[q + 9] = proto
            _put16(out, q + 10, 0)
            _address(out, q + 12, f, False, d == 0, srv, k == K_DNS)
            _address(out, q + 16, f, False, d == 1, srv, k == K_DNS)
            _put16(out, q + 10, ~ones_sum(out, q, 20) & 0xFFFF)
        # transport header and payload
        l4 = q + iph
        l4len = inner_len - iph
        cport = client_port[f]
        sport = 443 if k == K_TLS or k == K_QUIC else (80 if k == K_HTTP else (
            53 if k == K_DNS else WIREGUARD_PORT))
        s = salt[f]
        if proto == 6:
            fl = _TCP_FLAGS[role]
            hl = 24 if fl & 0x02 else 20
            _put16(out, l4, sport if d else cport)
            _put16(out, l4 + 2, cport if d else sport)
            _put32(out, l4 + 4, p_seq[j])
            _put32(out, l4 + 8, p_ack[j])
            out[l4 + 12] = (hl // 4) << 4
            out[l4 + 13] = fl
            _put16(out, l4 + 14, 65160 if d else 64240)
            _put32(out, l4 + 16, 0)     # checksum, urgent pointer
            if hl == 24:                # MSS option on SYN and SYN-ACK
                _put16(out, l4 + 20, 0x0204)
                _put16(out, l4 + 22, mss - (iph - 20))
            pay = l4 + hl
            if role == R_HELLO:
                n0 = name_off[name_idx[f]]
                nl = name_off[name_idx[f] + 1] - n0
                size = _client_message(scratch, k, names, n0, nl, hello, h_off, h_size, h_sni,
                                       by_len, s)
                if size < 0 or p_off[j] + plen > size:
                    return False
                for x in range(plen):
                    out[pay + x] = scratch[p_off[j] + x]
            elif role == R_DATA or role == R_DATA_PSH:
                _server_data(out, pay, p_off[j], plen, k, f_total[f], flight, scratch, pool, s)
        elif proto == 17:
            _put16(out, l4, sport if d else cport)
            _put16(out, l4 + 2, cport if d else sport)
            _put16(out, l4 + 4, l4len)
            _put16(out, l4 + 6, 0)
            pay = l4 + 8
            if role == R_DNS_Q or role == R_DNS_R:
                w0 = wire_off[name_idx[f]]
                _dns(out, pay, p_off[j], role == R_DNS_R, wire, w0, wire_off[name_idx[f] + 1] - w0,
                     (_draw(s, D_DNS_ID, 0) + np.uint64(p_off[j])) & np.uint64(0xFFFF), srv)
            elif role == R_INITIAL and quic_off[f] >= 0:
                if quic_off[f] + plen > quic.shape[0]:
                    return False
                for x in range(plen):
                    out[pay + x] = quic[quic_off[f] + x]
            elif k == K_QUIC:           # short header: fixed bit, DCID of the receiver
                _copy_pool(out, pay, pool, np.int64(_draw(s, D_POOL, p_off[j] + 1) % np.uint64(POOL)), plen)
                out[pay] = 0x40 | (out[pay] & 0x3F)
                _put64(out, pay + 1, cid[f, d])
            else:                       # WireGuard transport data: type 4, receiver, counter
                _copy_pool(out, pay, pool, np.int64(_draw(s, D_POOL, p_off[j] + 1) % np.uint64(POOL)), plen)
                _put32(out, pay, 0x04000000)
                _put32(out, pay + 4, cid[f, 1 - d])
                put_u32le(out, pay + 8, p_off[j] // 2)
                put_u32le(out, pay + 12, 0)
        else:
            out[l4] = _ECHO_TYPE[1 if fv6 else 0, d]
            out[l4 + 1] = 0
            _put16(out, l4 + 2, 0)
            _put16(out, l4 + 4, cport)
            _put16(out, l4 + 6, p_off[j] + 1)
            pay = l4 + 8
            _copy_pool(out, pay, pool, np.int64(_draw(s, D_POOL, p_off[j] + 1) % np.uint64(POOL)), plen)
        # checksums: transport (with its pseudo-header), then the outer UDP over it all
        raw = np.uint32(ones_sum(out, l4, l4len))      # checksum field still 0
        acc = raw
        if proto != 1:
            acc += ones_sum(out, q + 8, 32) if fv6 else ones_sum(out, q + 12, 8)
            acc += proto + l4len
        c = ~_fold(acc) & 0xFFFF
        if proto == 17 and c == 0:
            c = 0xFFFF
        _put16(out, l4 + (6 if proto == 17 else (16 if proto == 6 else 2)), c)
        # the segment sums to raw + c now, so the outer sum needs no second pass over it
        outer = np.uint32(ones_sum(out, u, 8 + 40 + iph)) + _fold(raw + c)
        outer += ones_sum(out, ip + 12, 8) + 17 + (frame - ETH - 20)
        c = ~_fold(outer) & 0xFFFF
        _put16(out, u + 6, 0xFFFF if c == 0 else c)
        o += rl
    return o == out.shape[0]


@njit(cache=True, nogil=True)
def _cut(order, p_ts, p_rlen, limit, last, bounds, nbytes):
    """Walk the packets in time order: make their timestamps strictly increasing (a tie
    moves the later packet on by a nanosecond; last[0] is the previous packet's, and
    becomes this walk's last), and cut them into chunks of at most `limit` bytes: chunk
    c is order[bounds[c]:bounds[c+1]], nbytes[c] bytes of records.  Returns the number
    of chunks, -1 if `bounds` is too short."""
    c = 0
    size = 0
    bounds[0] = 0
    for i in range(order.shape[0]):
        j = order[i]
        t = max(p_ts[j], last[0] + 1)
        p_ts[j] = t
        last[0] = t
        r = np.int64(p_rlen[j])
        if size + r > limit and size > 0:
            if c + 2 >= bounds.shape[0]:
                return -1
            nbytes[c] = size
            c += 1
            bounds[c] = i
            size = 0
        size += r
    nbytes[c] = size
    bounds[c + 1] = order.shape[0]
    return c + 1 if order.shape[0] else 0


# --- driver -----------------------------------------------------------------------------------

def _packets_per_flow(p: Plan) -> np.ndarray:
    ppf = p.packets_per_flow
    tcp = np.maximum(ppf, 6 + p.pieces.astype(np.int64))
    return np.select([p.kind <= K_HTTP, p.kind == K_DNS, p.kind == K_ICMP],
                     [tcp, 4 if ppf >= 4 else 2, 2 * max(1, ppf // 2)], ppf).astype(np.int64)


def generate(path: str | Path, *, flows: int, packets_per_flow: int,
             mix: dict[str, float] | None = None, names: list[str] | None = None,
             ipv6_share: float = 0.2, sizes: str = "imix", endpoints: int = 3,
             split_client_hello_share: float = 0.1, out_of_order_share: float = 0.0,
             seed: int = 0, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a nanosecond Ethernet pcap of GWLB traffic to `path` (see the module docstring).

    `mix`: weights of the flow kinds (tls, http, dns, quic, udp, icmp; missing = 0);
    `names`: the SNI / Host / query names, one drawn per named flow (default: 1000 random
    names from the seed); `ipv6_share`: of the flows; `sizes`: imix, 64, 1500 or jumbo
    (inner IP lengths of bulk packets); `endpoints`: GWLB endpoints the flows come
    through; `split_client_hello_share`: of the TLS flows; `out_of_order_share`: of the
    TCP flows that can have a pair swapped.  `progress(written, total)` is called with
    packet counts as chunks reach the file.  Returns counts: flows and packets per kind,
    totals (flows, packets, bytes of frames), split_client_hellos, out_of_order,
    ipv6_flows, and quic_initials (False when aioquic is missing and QUIC flows have none).
    """
    return write(path, plan(flows=flows, packets_per_flow=packets_per_flow, mix=mix, names=names,
                            ipv6_share=ipv6_share, sizes=sizes, endpoints=endpoints,
                            split_client_hello_share=split_client_hello_share,
                            out_of_order_share=out_of_order_share, seed=seed), progress)


# The per-packet columns the schedule kernel fills and the write kernel reads.
_COLUMNS = (("flow", np.int32), ("ts", np.int64), ("role", np.uint8), ("plen", np.uint16),
            ("off", np.int32), ("seq", np.uint32), ("ack", np.uint32), ("ipid", np.uint16),
            ("rlen", np.uint16))
GROUP_PACKETS = 1 << 20             # packets scheduled at a time


def write(path: str | Path, p: Plan, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the capture a plan describes; what `generate` returns (`progress`: as there).

    Memory stays bounded however long the capture: flows are scheduled a group at a
    time (in start order), and a group's packets go out once no later flow can start
    before them; the rest wait for the next group.
    """
    rng = np.random.default_rng([p.seed, 1])   # templates: a stream apart from the plan's
    name_len = np.array([len(n) for n in p.names], np.int64)
    flow_len = np.where(p.name >= 0, name_len[np.maximum(p.name, 0)], 0)
    hellos = _tls_hellos(p.names, set(flow_len[p.kind == K_TLS].tolist()), rng)
    flight = np.frombuffer(_server_flight(rng), np.uint8).copy()
    quic_lengths = set(flow_len[p.kind == K_QUIC].tolist())
    quic_hellos = _quic_hellos(p.names, quic_lengths, rng) if quic_lengths else {}
    plain = {length: _initial_plaintext(bytes(msg), fields)
             for length, (msg, fields) in (quic_hellos or {}).items()}
    quic_off = np.full(p.flows, -1, np.int64)   # -1: no Initial (not QUIC, or no aioquic)
    pool = rng.integers(0, 256, POOL + MAX_INNER, dtype=np.uint8)
    names = np.frombuffer("".join(p.names).encode(), np.uint8).copy()
    name_off = np.zeros(len(p.names) + 1, np.int64)
    np.cumsum(name_len, out=name_off[1:])
    wire, wire_off = _dns_names(p.names)
    size_len = np.array([s for s, _ in SIZES[p.sizes]], np.int64)
    size_cut = np.cumsum([w for _, w in SIZES[p.sizes]]).astype(np.int64)
    msg_len = np.zeros(p.flows, np.int64)      # the client's first message; DNS: the name's
    tls = p.kind == K_TLS
    msg_len[tls] = hellos.size[hellos.by_len[flow_len[tls]]]
    msg_len[p.kind == K_HTTP] = len(HTTP_PRE) + flow_len[p.kind == K_HTTP] + len(HTTP_POST)
    msg_len[p.kind == K_DNS] = flow_len[p.kind == K_DNS] + 2
    if (msg_len > 1400).any():          # the client's first message fits one segment
        raise GenError("names", "a name too long for a client message in one segment")
    npk = _packets_per_flow(p)
    first = np.zeros(p.flows + 1, np.int64)
    np.cumsum(npk, out=first[1:])
    f_total = np.zeros(p.flows, np.int64)
    mss = (MAX_INNER if p.sizes == "jumbo" else 1500) - 40
    last = np.full(1, EPOCH_NS - 1, np.int64)
    scratch = np.zeros(4096, np.uint8)
    record_bytes = 0

    def jobs():
        """(packets, callable) per chunk of records, in file order."""
        nonlocal record_bytes
        carry = {k: np.zeros(0, t) for k, t in _COLUMNS}
        g0 = 0
        while g0 < p.flows:
            g1 = max(g0 + 1, int(np.searchsorted(first, first[g0] + GROUP_PACKETS, "right")) - 1)
            g1 = min(g1, p.flows)
            rows = np.flatnonzero(p.kind[g0:g1] == K_QUIC) + g0
            quic = (_quic_initials(p, rows, plain, quic_off) if quic_hellos is not None
                    else np.zeros(1, np.uint8))
            n = int(first[g1] - first[g0])
            new = {k: np.zeros(n, t) for k, t in _COLUMNS}
            ok = _schedule(g0, first[g0:g1 + 1] - first[g0], p.kind, p.v6, p.pieces,
                           p.out_of_order, p.start, p.rtt, p.isn, p.ip_id, p.salt, msg_len,
                           size_len, size_cut, len(flight) + 6, len(HTTP_RESPONSE) + 5,
                           *new.values(), f_total)
            assert ok, "schedule kernel refused the plan"
            col = {k: np.concatenate((carry[k], new[k])) for k, _ in _COLUMNS}
            order = np.argsort(col["ts"], kind="stable")
            # every later flow starts at or after the next group's first start
            until = int(p.start[g1]) + EPOCH_NS if g1 < p.flows else np.iinfo(np.int64).max
            ready = int(np.searchsorted(col["ts"][order], until - EPOCH_NS))
            carry = {k: v[order[ready:]] for k, v in col.items()}
            # a flow's first packet leaves with its group (starts are distinct), so the
            # group's QUIC blob serves every Initial that reads it
            assert not (carry["role"] == R_INITIAL).any()
            order = order[:ready]
            col["ts"][order] += EPOCH_NS
            emit_bytes = int(col["rlen"][order].sum(dtype=np.int64))
            record_bytes += emit_bytes
            bounds = np.zeros(emit_bytes // (CHUNK_BYTES - MAX_RECORD) + 3, np.int64)
            nbytes = np.zeros(len(bounds), np.int64)
            chunks = _cut(order, col["ts"], col["rlen"], CHUNK_BYTES, last, bounds, nbytes)
            assert chunks >= 0, "chunk table too short"
            for c in range(chunks):
                yield (int(bounds[c + 1] - bounds[c]),
                       partial(_chunk, col, order[bounds[c]:bounds[c + 1]], int(nbytes[c]), quic))
            g0 = g1

    def _chunk(col: dict, order: np.ndarray, size: int, quic: np.ndarray) -> np.ndarray:
        out = np.empty(size, np.uint8)
        ok = _write(out, order, *col.values(), p.kind, p.v6, p.endpoint, p.cookie, p.gwlb_port,
                    p.client_port, p.server, p.name, p.salt, p.cid, f_total, quic_off,
                    p.endpoint_id, p.attachment_id, names, name_off, wire, wire_off,
                    hellos.blob, hellos.off, hellos.size, hellos.sni, hellos.by_len, flight,
                    quic, pool, scratch, mss)
        assert ok, "write kernel refused a packet"
        return out

    # The kernel releases the GIL: a worker fills the next chunk while this thread
    # writes one (and schedules the next group).
    n = int(first[-1])
    written = 0

    def put(done: tuple[int, Future]) -> None:
        nonlocal written
        fh.write(done[1].result().data)
        written += done[0]
        if progress:
            progress(written, n)

    with open(path, "wb") as fh, ThreadPoolExecutor(1) as worker:
        fh.write(PCAP_HEADER)
        ahead = None
        for packets, job in jobs():
            done, ahead = ahead, (packets, worker.submit(job))
            if done is not None:
                put(done)
        if ahead is not None:
            put(ahead)
    counts: dict = {}
    for k, kind in enumerate(KINDS):
        rows = p.kind == k
        counts[kind] = {"flows": int(rows.sum()), "packets": int(npk[rows].sum())}
    counts["total"] = {"flows": p.flows, "packets": n, "bytes": record_bytes - RECORD * n}
    counts["split_client_hellos"] = int((p.pieces > 1).sum())
    counts["out_of_order"] = int(p.out_of_order.sum())
    counts["ipv6_flows"] = int(p.v6.sum())
    counts["quic_initials"] = quic_hellos is not None
    return counts
