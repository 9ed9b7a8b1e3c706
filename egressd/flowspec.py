"""A flow written on the command line (`egressd policy explain --flow`): its grammar,
the packets it stands for, and what the pipeline decides for each of them.

    tcp 10.0.0.5:40000 -> 203.0.113.7:443 sni=example.com    TLS (ClientHello from Python's ssl)
    tcp 10.0.0.5:40000 -> 203.0.113.7:22                     TCP, one segment of data
    http 10.0.0.5:40001 -> 203.0.113.8:80 host=example.org    an HTTP/1.1 GET
    udp 10.0.0.5:53000 -> 198.51.100.53:53 dns=example.com qtype=AAAA
    udp 10.0.0.5:5000 -> 198.51.100.9:9999                   one datagram each way
    quic 10.0.0.5:50000 -> 203.0.113.7:443 sni=example.com   a QUIC v1 client Initial
    icmp 10.0.0.5 -> 203.0.113.7                             echo request and reply
    tcp [fd00::5]:40000 -> [2001:db8::7]:443 sni=example.com IPv6 in brackets

The packets are what a client and server exchange: the TCP handshake, the client's
first message (split at the MSS like a real stack would), the server's reply; each
wrapped as GWLB delivers it to a target (Ethernet / IPv4 / UDP 6081 / GENEVE with
GWLB's endpoint, attachment and flow cookie options).  They go through the same
Pipeline `egressd replay` runs, so what is reported is what replay would decide.
"""
from __future__ import annotations

import ipaddress
import re
import ssl
import struct
from dataclasses import dataclass

import numpy as np

from egressd.engine.batch import PacketBatch
from egressd.engine.flows import MIN_CAPACITY, FlowConfig
from egressd.engine.frag import FragConfig
from egressd.engine.l7 import APP_NAMES
from egressd.engine.pcapio import LINKTYPE_ETHERNET
from egressd.engine.pipeline import Pipeline
from egressd.engine.quic import VERSION_1, protect_client_initial
from egressd.engine.reasons import NAMES, Verdict
from egressd.engine.wire import ones_sum
from egressd.geneve import header as G
from egressd.rules.compile import CompiledPolicy, _wire_name
from egressd.rules.explain import Step
from egressd.rules.model import QTYPES, _qtype

KINDS = ("tcp", "http", "udp", "quic", "icmp")
OPTIONS = {"tcp": ("sni", "host"), "http": ("host",), "udp": ("dns", "qtype"), "quic": ("sni",),
           "icmp": ()}
GRAMMAR = "PROTO SRC -> DST [key=value ...], e.g. \"tcp 10.0.0.5:40000 -> 203.0.113.7:443 sni=example.com\""

# The GWLB side of the wrapping (the addresses of pcaps/make_samples.py, documentation ids)
GWLB_MAC, APPLIANCE_MAC = bytes.fromhex("02000a000a4a"), bytes.fromhex("02000a000840")
GWLB_IP, APPLIANCE_IP = ipaddress.IPv4Address("10.0.10.74"), ipaddress.IPv4Address("10.0.8.64")
ENDPOINT_ID, ATTACHMENT_ID, FLOW_COOKIE = 0x0A1B2C3D4E5F6071, 0x0000000000A00001, 0x1234ABCD
GWLB_SOURCE_PORT = 49153
T0_NS, STEP_NS = 1_700_000_000 * 10**9, 1_000_000   # packets 1 ms apart

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
SYN, PSH, ACK = 0x02, 0x08, 0x10
CLIENT_ISN, SERVER_ISN = 0x1000, 0x8000
QUIC_DATAGRAM = 1200        # RFC 9000 14.1: a client pads its Initial datagrams to this
_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")


class FlowSpecError(ValueError):
    """A --flow string that is not a flow: the message says what is wrong."""


@dataclass(frozen=True)
class FlowSpec:
    kind: str                       # one of KINDS
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int                      # 0 for icmp
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    dport: int
    sni: str | None = None
    host: str | None = None
    dns: str | None = None
    qtype: int = 1                  # A

    @property
    def v6(self) -> bool:
        return self.src.version == 6

    def describe(self) -> str:
        if self.kind == "tcp":
            return "TLS over TCP" if self.sni else "HTTP over TCP" if self.host else "TCP"
        if self.kind == "udp":
            return "DNS over UDP" if self.dns else "UDP"
        return {"http": "HTTP over TCP", "quic": "QUIC v1 over UDP",
                "icmp": "ICMPv6 echo" if self.v6 else "ICMP echo"}[self.kind]


def parse_flow(text: str) -> FlowSpec:
    """The flow `text` describes; FlowSpecError names what is wrong."""
    words = text.replace("->", " -> ").split()
    if not words:
        raise FlowSpecError(f"empty; expected {GRAMMAR}")
    kind = words[0].lower()
    if kind not in KINDS:
        raise FlowSpecError(f"unknown protocol {words[0]!r}; expected one of {', '.join(KINDS)}")
    if len(words) < 4 or words[2] != "->":
        raise FlowSpecError(f"expected {GRAMMAR}")
    ported = kind != "icmp"
    src, sport = _endpoint(words[1], "source", ported)
    dst, dport = _endpoint(words[3], "destination", ported)
    if src.version != dst.version:
        raise FlowSpecError(f"source {src} is IPv{src.version} but destination {dst} is IPv{dst.version}")
    opts: dict[str, str] = {}
    for w in words[4:]:
        key, eq, value = w.partition("=")
        key = key.lower()
        if not eq or not key:
            raise FlowSpecError(f"{w!r}: options are key=value")
        if key not in OPTIONS[kind]:
            takes = ", ".join(k + "=" for k in OPTIONS[kind]) or "no options"
            raise FlowSpecError(f"unknown option {key!r} for {kind}; {kind} takes {takes}")
        if key in opts:
            raise FlowSpecError(f"{key}= given twice")
        opts[key] = value
    if "sni" in opts and "host" in opts:
        raise FlowSpecError("sni= and host= exclude each other: a TLS flow has an SNI, an HTTP flow a Host")
    if kind == "http" and "host" not in opts:
        raise FlowSpecError("http needs host=NAME")
    if "qtype" in opts and "dns" not in opts:
        raise FlowSpecError("qtype= needs dns=NAME")
    names = {k: _name(opts[k], k) for k in ("sni", "host", "dns") if k in opts}
    if "sni" in names and is_address(names["sni"]):
        raise FlowSpecError(f"sni={names['sni']} is an address; an SNI names a host (clients leave "
                            "addresses out of it)")
    qtype = 1
    if "qtype" in opts:
        try:
            qtype = _qtype(opts["qtype"])
        except ValueError as e:
            raise FlowSpecError(f"qtype= {e}") from None
    return FlowSpec(kind, src, sport, dst, dport, qtype=qtype, **names)


def _endpoint(word: str, which: str, ported: bool) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """ADDRESS:PORT, [IPv6]:PORT, or (no port) ADDRESS / [IPv6]."""
    addr, port = word, ""
    if word.startswith("["):
        addr, close, port = word[1:].partition("]")
        if not close:
            raise FlowSpecError(f"{which} {word!r}: no ']' after the IPv6 address")
        if port and not port.startswith(":"):
            raise FlowSpecError(f"{which} {word!r}: expected [IPv6]:PORT")
        port = port[1:]
    elif word.count(":") == 1:
        addr, _, port = word.partition(":")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        hint = " (an IPv6 address with a port goes in brackets: [2001:db8::1]:443)" if ":" in addr else ""
        raise FlowSpecError(f"{which} {word!r}: {addr!r} is not an IP address{hint}") from None
    if not ported:
        if port:
            raise FlowSpecError(f"{which} {word!r}: icmp takes addresses without ports")
        return ip, 0
    if not port:
        form = ("[IPv6]:PORT: an IPv6 address with a port goes in brackets" if ip.version == 6
                else "ADDRESS:PORT")
        raise FlowSpecError(f"{which} {word!r}: a port is needed ({form})")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise FlowSpecError(f"{which} {word!r}: port {port!r} is not a number from 1 to 65535")
    return ip, int(port)


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _name(value: str, key: str) -> str:
    if not value.isascii():
        raise FlowSpecError(f"{key}={value}: write an internationalized name in its xn-- form")
    if len(value.rstrip(".")) > 253 or not _NAME.fullmatch(value):
        raise FlowSpecError(f"{key}={value!r} is not a domain name (letters, digits, '-', '_', "
                            "dot-separated labels of at most 63 characters)")
    return value


# --- the packets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    to_server: bool
    what: str
    inner: bytes                    # the IP packet


def client_context(alpn: list[str] | None = None, tls12: bool = False) -> ssl.SSLContext:
    """A client context that verifies nothing (there is no server), optionally TLS 1.2
    at most and offering `alpn`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False          # no server: nothing to verify, names may be IPs
    ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def ssl_client_hello(host: str | None, alpn: list[str] | None = None, tls12: bool = False,
                     ctx: ssl.SSLContext | None = None) -> bytes:
    """The first bytes Python's ssl (OpenSSL) sends as a client: its ClientHello record(s).
    `host` is the server_hostname (OpenSSL leaves an IP address or None out of SNI)."""
    ctx = ctx or client_context(alpn, tls12)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:  # waiting for a ServerHello that never comes
        pass
    return outgoing.read()


def _checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum (0 stays 0: callers of UDP map it to 0xFFFF)."""
    return ~int(ones_sum(np.frombuffer(data, np.uint8), 0, len(data))) & 0xFFFF


def _ipv4(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, proto: int, payload: bytes,
          ident: int, ttl: int = 64, df: bool = True) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF,
                    0x4000 if df else 0, ttl, proto, 0, src.packed, dst.packed)
    return h[:10] + struct.pack("!H", _checksum(h)) + h[12:] + payload


class _Builder:
    """The inner packets of one flow, both ways, with consistent TCP sequence numbers."""

    def __init__(self, spec: FlowSpec) -> None:
        self.spec = spec
        self.seq = {True: CLIENT_ISN, False: SERVER_ISN}
        self.ident = {True: 0x1000, False: 0x2000}
        self.packets: list[Packet] = []

    def ip(self, to_server: bool, proto: int, l4: bytes, csum_at: int, what: str) -> None:
        """Put `l4` in an IP packet of the flow's family, its checksum at l4[csum_at]
        (over the pseudo-header but for ICMPv4; a UDP sum of 0 is sent as 0xFFFF)."""
        s = self.spec
        src, dst = (s.src, s.dst) if to_server else (s.dst, s.src)
        if s.v6:
            pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(l4), proto)
        elif proto == PROTO_ICMP:
            pseudo = b""
        else:
            pseudo = src.packed + dst.packed + struct.pack("!xBH", proto, len(l4))
        c = _checksum(pseudo + l4) or (0xFFFF if proto == PROTO_UDP else 0)
        l4 = l4[:csum_at] + struct.pack("!H", c) + l4[csum_at + 2:]
        if s.v6:
            inner = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, src.packed, dst.packed) + l4
        else:
            inner = _ipv4(src, dst, proto, l4, self.ident[to_server])
            self.ident[to_server] += 1
        self.packets.append(Packet(to_server, what, inner))

    def tcp(self, to_server: bool, flags: int, what: str, payload: bytes = b"") -> None:
        s = self.spec
        sport, dport = (s.sport, s.dport) if to_server else (s.dport, s.sport)
        ack = self.seq[not to_server] if flags & ACK else 0
        opts = struct.pack("!BBH", 2, 4, self.mss) if flags & SYN else b""   # MSS option
        hdr = struct.pack("!HHIIBBHHH", sport, dport, self.seq[to_server], ack,
                          (20 + len(opts)) // 4 << 4, flags, 64240, 0, 0) + opts
        self.seq[to_server] = (self.seq[to_server] + len(payload) + bool(flags & SYN)) & 0xFFFFFFFF
        self.ip(to_server, PROTO_TCP, hdr + payload, 16, what)

    @property
    def mss(self) -> int:
        return 1440 if self.spec.v6 else 1460        # a 1500-byte MTU

    def tcp_flow(self, first: bytes, what: str, reply: bytes, reply_what: str) -> None:
        """Handshake, the client's first message at the MSS, the server's reply."""
        self.tcp(True, SYN, "TCP SYN")
        self.tcp(False, SYN | ACK, "TCP SYN-ACK")
        self.tcp(True, ACK, "TCP ACK")
        cuts = range(0, len(first), self.mss)
        for k, at in enumerate(cuts):
            part = f"{what}, segment {k + 1} of {len(cuts)}" if len(cuts) > 1 else what
            seg = first[at:at + self.mss]
            self.tcp(True, PSH | ACK, f"{part} ({len(seg)} bytes)", seg)
        self.tcp(False, PSH | ACK, f"{reply_what} ({len(reply)} bytes)", reply)

    def udp(self, to_server: bool, payload: bytes, what: str) -> None:
        s = self.spec
        sport, dport = (s.sport, s.dport) if to_server else (s.dport, s.sport)
        self.ip(to_server, PROTO_UDP, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload,
                6, f"{what} ({len(payload)} bytes)")

    def icmp_echo(self, to_server: bool) -> None:
        v6 = self.spec.v6
        kind = (128 if to_server else 129) if v6 else (8 if to_server else 0)
        msg = struct.pack("!BBHHH", kind, 0, 0, 0x4567, 1) + b"egressd explain!"
        self.ip(to_server, PROTO_ICMPV6 if v6 else PROTO_ICMP, msg, 2,
                f"{'ICMPv6' if v6 else 'ICMP'} echo {'request' if to_server else 'reply'}")


def _quic_initial(hello: bytes, scid: bytes, dcid: bytes) -> bytes:
    """A QUIC v1 client Initial datagram carrying the ClientHello handshake message in
    one CRYPTO frame, padded to 1200 bytes, protected with the Initial keys of `dcid`
    (RFC 9001 5: AEAD_AES_128_GCM, header protection with AES-ECB)."""
    pn_len, pn, tag = 2, 0, 16
    crypto = b"\x06\x00" + struct.pack("!H", 0x4000 | len(hello)) + hello   # offset 0, 2-byte length
    head_len = 1 + 4 + 1 + len(dcid) + 1 + len(scid) + 1 + 2 + pn_len
    payload = crypto + bytes(max(0, QUIC_DATAGRAM - head_len - len(crypto) - tag))  # PADDING
    length = pn_len + len(payload) + tag
    header = (bytes([0xC0 | (pn_len - 1)]) + struct.pack("!I", VERSION_1) + bytes([len(dcid)]) + dcid
              + bytes([len(scid)]) + scid + b"\x00" + struct.pack("!H", 0x4000 | length)
              + pn.to_bytes(pn_len, "big"))
    return protect_client_initial(VERSION_1, dcid, header, pn_len, payload)


def build_packets(spec: FlowSpec) -> list[Packet]:
    """The flow's packets, client and server, in the order they cross the appliance."""
    b = _Builder(spec)
    if spec.kind == "tcp" and spec.sni:
        b.tcp_flow(ssl_client_hello(spec.sni), f"TLS ClientHello, SNI {spec.sni}",
                   b"\x16\x03\x03\x00\x04\x02\x00\x00\x00", "TLS handshake record (ServerHello stand-in)")
    elif spec.host:
        request = (f"GET / HTTP/1.1\r\nHost: {spec.host}\r\nUser-Agent: egressd-explain\r\n"
                   "Accept: */*\r\n\r\n").encode()
        b.tcp_flow(request, f"HTTP GET, Host {spec.host}",
                   b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 200 OK")
    elif spec.kind == "tcp":
        b.tcp_flow(b"egressd explain: client data\r\n", "client data", b"server data\r\n", "server data")
    elif spec.dns:
        ident = spec.sport & 0xFFFF
        question = _wire_name(spec.dns) + struct.pack("!HH", spec.qtype, 1)
        qt = _qtype_text(spec.qtype)
        b.udp(True, struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question,
              f"DNS query {spec.dns} {qt}")
        b.udp(False, struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question,
              f"DNS response NOERROR to {spec.dns} {qt}, no answer records")
    elif spec.kind == "udp":
        b.udp(True, b"egressd explain: datagram", "UDP datagram")
        b.udp(False, b"reply", "UDP datagram")
    elif spec.kind == "quic":
        hello = ssl_client_hello(spec.sni, ctx=_tls13())
        message = hello[5:5 + int.from_bytes(hello[3:5], "big")]   # the handshake message, unframed
        initial = _quic_initial(message, scid=bytes(range(1, 9)), dcid=bytes(range(0x11, 0x19)))
        b.udp(True, initial, f"QUIC Initial, ClientHello{', SNI ' + spec.sni if spec.sni else ' without SNI'}")
        b.udp(False, bytes([0x40]) + bytes(range(1, 9)) + bytes(40), "QUIC short-header packet (opaque)")
    else:
        b.icmp_echo(True)
        b.icmp_echo(False)
    return b.packets


def _tls13() -> ssl.SSLContext:
    """QUIC carries TLS 1.3 only."""
    ctx = client_context(["h3"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _qtype_text(qtype: int) -> str:
    return next((k for k, v in QTYPES.items() if v == qtype), f"TYPE{qtype}")


def gwlb_frame(inner: bytes) -> bytes:
    """Ethernet / IPv4 / UDP 6081 / GENEVE (VNI 0, GWLB's three options) / `inner`, as
    GWLB sends a packet to its target."""
    opts = b"".join(struct.pack("!HBB", G.GWLB_CLASS, t, len(d) // 4) + d for t, d in (
        (G.GWLB_ENDPOINT_ID, struct.pack("!Q", ENDPOINT_ID)),
        (G.GWLB_ATTACHMENT_ID, struct.pack("!Q", ATTACHMENT_ID)),
        (G.GWLB_FLOW_COOKIE, struct.pack("!I", FLOW_COOKIE))))
    proto = G.PROTO_IPV6 if inner[0] >> 4 == 6 else G.PROTO_IPV4
    geneve = struct.pack("!BBHI", len(opts) // 4, 0, proto, 0) + opts
    udp = struct.pack("!HHHH", GWLB_SOURCE_PORT, G.GENEVE_PORT, 8 + len(geneve) + len(inner), 0)
    return (APPLIANCE_MAC + GWLB_MAC + struct.pack("!H", 0x0800)
            + _ipv4(GWLB_IP, APPLIANCE_IP, PROTO_UDP, udp + geneve + inner, 0, ttl=255, df=False))


def decide(packets: list[Packet], policy: CompiledPolicy) -> tuple[list[Step], int]:
    """Every packet through one Pipeline with `policy` (as `egressd replay` would run a
    capture of them): a Step per packet, and how many packets egressd created."""
    frames = [gwlb_frame(p.inner) for p in packets]
    data = b"".join(frames)
    pipe = Pipeline(frag=FragConfig(mode=policy.frag_mode), flows=FlowConfig(capacity=MIN_CAPACITY),
                    policy=policy)
    pipe.l7.decrypt_quic = True   # the explanation names a QUIC flow's server
    buf = np.zeros(len(data) + pipe.extra_bytes, np.uint8)    # reassembly slabs behind the frames
    buf[:len(data)] = np.frombuffer(data, np.uint8)
    b = PacketBatch(len(frames), buf)
    b.reset(len(frames))
    sizes = np.array([len(f) for f in frames], np.int64)
    b.off[:] = np.cumsum(sizes) - sizes
    b.caplen[:] = b.wirelen[:] = sizes
    b.link[:] = LINKTYPE_ETHERNET
    b.ts_ns[:] = T0_NS + STEP_NS * np.arange(len(frames))
    pipe.process(b, len(data))
    steps = []
    for i, p in enumerate(packets):
        nid = int(b.name_id[i])
        name = pipe.l7.arena.get(nid) if nid >= 0 else None
        steps.append(Step(p.to_server, p.what, int(b.proto[i]), Verdict(b.verdict[i]).name,
                          NAMES[b.reason[i]], int(b.rule[i]), int(b.alert[i]), int(b.action[i]),
                          APP_NAMES[b.app[i]], name.decode("ascii", "replace") if name else None))
    return steps, pipe.created.n if pipe.created is not None else 0
