#!/usr/bin/env python3
"""Regenerate the committed GWLB sample captures in this folder.

Writes, next to this script:

* ``sample-gwlb.pcap``    - well-formed GENEVE-wrapped traffic as AWS Gateway Load
  Balancer delivers it to a target appliance (TLS, HTTP, DNS, ICMP, IPv6 inner, ...).
* ``malformed-gwlb.pcap`` - one packet per drop reason of the engine, after two
  well-formed controls.
* ``malformed-gwlb.json`` - manifest: packet index -> expected drop reason.

The output is deterministic: timestamps are fixed, and every "random" byte string
(TLS randoms, keys, ciphertext, cookies, ports) is derived from a label with SHAKE-256,
so running the script twice yields byte-identical files.

Usage: python pcaps/make_samples.py
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scapy.data import DLT_EN10MB
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import PcapWriter

HERE = Path(__file__).resolve().parent

# --- Outer (GWLB -> appliance) addressing --------------------------------------------
GWLB_MAC = "02:00:0a:00:0a:4a"
APPLIANCE_MAC = "02:00:0a:00:08:40"
GWLB_IP = "10.0.10.74"
APPLIANCE_IP = "10.0.8.64"
GWLB_IP6 = "fd00:0:0:10::4a"  # only used for the "outer is IPv6" malformation
APPLIANCE_IP6 = "fd00:0:0:8::40"

# --- GENEVE / GWLB constants ---------------------------------------------------------
GENEVE_PORT = 6081
VXLAN_PORT = 4789
PROTO_IPV4 = 0x0800
PROTO_IPV6 = 0x86DD
PROTO_ETHERNET = 0x6558
AWS_OPTION_CLASS = 0x0108
OPT_ENDPOINT_ID = 0x01
OPT_ATTACHMENT_ID = 0x02
OPT_FLOW_COOKIE = 0x03
OPT_CRITICAL = 0x80
# Google's IANA option class: never sent by GWLB, so a GWLB target must skip it
# (or drop the packet if the option is marked critical).
UNKNOWN_OPTION_CLASS = 0x0132
UNKNOWN_OPTION_TYPE = 0x10

# GWLB's MTU towards its targets: the largest inner IP packet it will deliver.
GWLB_INNER_MTU = 8500

EPOCH_US = 1_700_000_000 * 1_000_000  # 2023-11-14T22:13:20Z
SNAPLEN = 65535


def det_bytes(label: str, size: int) -> bytes:
    """Stable pseudo-random bytes: the same label always gives the same bytes."""
    return hashlib.shake_256(label.encode()).digest(size)


def det_int(label: str, low: int, high: int) -> int:
    """Stable pseudo-random integer in [low, high]."""
    return low + int.from_bytes(det_bytes(label, 8), "big") % (high - low + 1)


# --- GENEVE encoding -----------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A GWLB endpoint, identified to the appliance by GENEVE options 1 and 2."""

    endpoint_id: int
    attachment_id: int


ENDPOINT_A = Endpoint(endpoint_id=0x0A1B2C3D4E5F6071, attachment_id=0x0000000000A00001)
ENDPOINT_B = Endpoint(endpoint_id=0x0B2C3D4E5F607182, attachment_id=0x0000000000B00002)
ENDPOINT_C = Endpoint(endpoint_id=0x0C3D4E5F60718293, attachment_id=0x0000000000C00003)


def geneve_option(opt_class: int, opt_type: int, data: bytes, length_words: int | None = None) -> bytes:
    """One option TLV. The length field counts 4-byte words of data; it is
    normally derived from ``data`` but can be forced to build broken options."""
    if length_words is None:
        assert len(data) % 4 == 0, "GENEVE option data must be a multiple of 4 bytes"
        length_words = len(data) // 4
    return struct.pack("!HBB", opt_class, opt_type, length_words & 0x1F) + data


def aws_option(opt_type: int, data: bytes) -> bytes:
    return geneve_option(AWS_OPTION_CLASS, opt_type, data)


def endpoint_id_option(endpoint: Endpoint) -> bytes:
    return aws_option(OPT_ENDPOINT_ID, struct.pack("!Q", endpoint.endpoint_id))


def attachment_id_option(endpoint: Endpoint) -> bytes:
    return aws_option(OPT_ATTACHMENT_ID, struct.pack("!Q", endpoint.attachment_id))


def cookie_option(cookie: int) -> bytes:
    return aws_option(OPT_FLOW_COOKIE, struct.pack("!I", cookie))


def gwlb_options(endpoint: Endpoint, cookie: int) -> bytes:
    """The three options GWLB puts on every packet: 12 + 12 + 8 = 32 bytes."""
    return endpoint_id_option(endpoint) + attachment_id_option(endpoint) + cookie_option(cookie)


def geneve(
    protocol: int,
    options: bytes,
    *,
    version: int = 0,
    oam: bool = False,
    critical: bool = False,
    options_len: int | None = None,
) -> bytes:
    """GENEVE base header (VNI 0, as GWLB sends) followed by the option bytes.

    ``options_len`` (bytes) overrides the header's option length field, which is
    otherwise the real length of ``options``."""
    opt_words = (len(options) if options_len is None else options_len) // 4
    first = (version & 0x3) << 6 | (opt_words & 0x3F)
    flags = (0x80 if oam else 0) | (0x40 if critical else 0)
    vni = 0
    return struct.pack("!BBHI", first, flags, protocol, vni << 8) + options


def protocol_of(inner: bytes) -> int:
    """GENEVE protocol type matching an inner IP packet's version nibble."""
    return PROTO_IPV6 if inner[0] >> 4 == 6 else PROTO_IPV4


# --- Outer headers -------------------------------------------------------------------


def outer_ether(vlans: tuple[int, ...] = ()) -> Packet:
    l2: Packet = Ether(src=GWLB_MAC, dst=APPLIANCE_MAC)
    for vid in vlans:
        l2 = l2 / Dot1Q(vlan=vid)
    return l2


def outer_ip(**overrides: Any) -> IP:
    """Outer IPv4 header as GWLB sends it (TTL 255, no DF, ID 0); scapy fills in
    length and checksum unless a test overrides them."""
    fields: dict[str, Any] = dict(src=GWLB_IP, dst=APPLIANCE_IP, ttl=255, flags=0, id=0)
    fields.update(overrides)
    return IP(**fields)


def outer_frame(
    payload: bytes,
    gwlb_port: int,
    *,
    vlans: tuple[int, ...] = (),
    ip: dict[str, Any] | None = None,
    udp: dict[str, Any] | None = None,
) -> bytes:
    """Ethernet / IPv4 / UDP to port 6081 around ``payload`` (GENEVE header + inner)."""
    udp_fields: dict[str, Any] = dict(sport=gwlb_port, dport=GENEVE_PORT)
    udp_fields.update(udp or {})
    return bytes(outer_ether(vlans) / outer_ip(**(ip or {})) / UDP(**udp_fields) / Raw(payload))


def gwlb_frame(inner: bytes, endpoint: Endpoint, cookie: int, gwlb_port: int) -> bytes:
    """A plain well-formed GWLB packet."""
    return outer_frame(geneve(protocol_of(inner), gwlb_options(endpoint, cookie)) + inner, gwlb_port)


# --- Inner traffic -------------------------------------------------------------------


def inner_ip(src: str, dst: str, ip_id: int) -> Packet:
    """An inner IP header of the right family, as a Linux host would send it."""
    if ":" in src:
        return IPv6(src=src, dst=dst, hlim=64)
    return IP(src=src, dst=dst, ttl=64, flags="DF", id=ip_id)


class TcpConnection:
    """Builds both directions of one TCP connection with consistent seq/ack numbers."""

    def __init__(self, client: tuple[str, int], server: tuple[str, int], label: str, mss: int | None = None):
        self.client, self.server = client, server
        # Default: what a 1500-byte MTU allows for the address family.
        self.mss = mss if mss is not None else (1440 if ":" in client[0] else 1460)
        self.seq = {True: det_int(label + "/isn/c", 0, 2**32 - 1), False: det_int(label + "/isn/s", 0, 2**32 - 1)}
        self.ip_id = {True: det_int(label + "/id/c", 0, 0xFFFF), False: det_int(label + "/id/s", 0, 0xFFFF)}
        self.packets: list[Packet] = []

    def _send(self, from_client: bool, flags: str, payload: bytes = b"") -> None:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        options = [("MSS", self.mss)] if "S" in flags else []
        ack = self.seq[not from_client] if "A" in flags else 0
        segment = TCP(
            sport=src[1], dport=dst[1], seq=self.seq[from_client], ack=ack, flags=flags, window=64240, options=options
        )
        self.packets.append(inner_ip(src[0], dst[0], self.ip_id[from_client]) / segment / Raw(payload))
        self.ip_id[from_client] = (self.ip_id[from_client] + 1) & 0xFFFF
        # SYN and FIN each consume one sequence number.
        self.seq[from_client] = (self.seq[from_client] + len(payload) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF

    def handshake(self) -> None:
        self._send(True, "S")
        self._send(False, "SA")
        self._send(True, "A")

    def data(self, from_client: bool, payload: bytes) -> None:
        """Send ``payload`` in MSS-sized segments, then the peer ACKs it."""
        for start in range(0, len(payload), self.mss):
            self._send(from_client, "PA", payload[start : start + self.mss])
        self._send(not from_client, "A")

    def close(self) -> None:
        """Client-initiated close: FIN, FIN/ACK, ACK."""
        self._send(True, "FA")
        self._send(False, "FA")
        self._send(True, "A")


# TLS: built by hand so that every byte (randoms, keys) is fixed.
TLS_CHANGE_CIPHER_SPEC, TLS_HANDSHAKE, TLS_APPLICATION_DATA = 20, 22, 23
X25519, SECP256R1 = 0x001D, 0x0017


def vec8(data: bytes) -> bytes:
    return struct.pack("!B", len(data)) + data


def vec16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def tls_record(content_type: int, body: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", content_type, version, len(body)) + body


def tls_handshake(msg_type: int, body: bytes) -> bytes:
    return struct.pack("!B", msg_type) + len(body).to_bytes(3, "big") + body


def tls_extension(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!H", ext_type) + vec16(data)


def client_hello(sni: str, label: str) -> bytes:
    """A TLS 1.3 ClientHello record (legacy 1.2 framing) carrying ``sni``."""
    extensions = b"".join(
        [
            tls_extension(0x0000, vec16(b"\x00" + vec16(sni.encode()))),  # server_name: host_name
            tls_extension(0x000A, vec16(struct.pack("!HH", X25519, SECP256R1))),  # supported_groups
            tls_extension(0x000D, vec16(struct.pack("!HHH", 0x0403, 0x0804, 0x0401))),  # signature_algorithms
            tls_extension(0x0010, vec16(vec8(b"http/1.1"))),  # ALPN
            tls_extension(0x002B, vec8(struct.pack("!HH", 0x0304, 0x0303))),  # supported_versions
            tls_extension(0x0033, vec16(struct.pack("!H", X25519) + vec16(det_bytes(label + "/ckey", 32)))),
        ]
    )
    body = (
        struct.pack("!H", 0x0303)
        + det_bytes(label + "/crandom", 32)
        + vec8(det_bytes(label + "/session", 32))
        + vec16(struct.pack("!HHHH", 0x1301, 0x1302, 0x1303, 0xC02F))
        + vec8(b"\x00")  # null compression only
        + vec16(extensions)
    )
    return tls_record(TLS_HANDSHAKE, tls_handshake(1, body), version=0x0301)


def server_flight(label: str) -> bytes:
    """ServerHello + ChangeCipherSpec + the encrypted rest of the server handshake."""
    extensions = tls_extension(0x002B, struct.pack("!H", 0x0304)) + tls_extension(
        0x0033, struct.pack("!H", X25519) + vec16(det_bytes(label + "/skey", 32))
    )
    body = (
        struct.pack("!H", 0x0303)
        + det_bytes(label + "/srandom", 32)
        + vec8(det_bytes(label + "/session", 32))  # echoes the client's session id
        + struct.pack("!HB", 0x1301, 0)
        + vec16(extensions)
    )
    return (
        tls_record(TLS_HANDSHAKE, tls_handshake(2, body))
        + tls_record(TLS_CHANGE_CIPHER_SPEC, b"\x01")
        + tls_record(TLS_APPLICATION_DATA, det_bytes(label + "/sflight", 1180))
    )


def tls_connection(
    client: tuple[str, int], server: tuple[str, int], sni: str, label: str, response_size: int = 640
) -> list[Packet]:
    """Handshake, ClientHello, server flight, one encrypted request/response, close."""
    conn = TcpConnection(client, server, label)
    conn.handshake()
    conn.data(True, client_hello(sni, label))
    conn.data(False, server_flight(label))
    conn.data(
        True,
        tls_record(TLS_CHANGE_CIPHER_SPEC, b"\x01")
        + tls_record(TLS_APPLICATION_DATA, det_bytes(label + "/cfinished", 53))
        + tls_record(TLS_APPLICATION_DATA, det_bytes(label + "/request", 96)),
    )
    conn.data(False, tls_record(TLS_APPLICATION_DATA, det_bytes(label + "/response", response_size)))
    conn.close()
    return conn.packets


def http_download(client: tuple[str, int], server: tuple[str, int], host: str, label: str) -> list[Packet]:
    """HTTP/1.1 GET whose response fills exactly two full-size jumbo segments, so
    that those two inner IPv4 packets are exactly GWLB_INNER_MTU bytes long."""
    mss = GWLB_INNER_MTU - 20 - 20  # inner IPv4 + TCP headers without options
    conn = TcpConnection(client, server, label, mss=mss)
    conn.handshake()
    conn.data(
        True,
        f"GET /releases/egressd-0.1.0.tar.gz HTTP/1.1\r\nHost: {host}\r\n"
        "User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n".encode(),
    )
    head_template = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\n"
        "Content-Length: {length}\r\nConnection: keep-alive\r\n\r\n"
    )
    body_len = 2 * mss - len(head_template.format(length=2 * mss).encode())
    head = head_template.format(length=body_len).encode()
    assert len(head) + body_len == 2 * mss, "Content-Length digits changed the header size"
    conn.data(False, head + det_bytes(label + "/body", body_len))
    conn.close()
    return conn.packets


def dns_exchange(
    client: tuple[str, int], server: str, qname: str, qtype: str, answer: str, dns_id: int
) -> list[Packet]:
    query = DNS(id=dns_id, rd=1, qd=DNSQR(qname=qname, qtype=qtype))
    reply = DNS(
        id=dns_id,
        qr=1,
        rd=1,
        ra=1,
        qd=DNSQR(qname=qname, qtype=qtype),
        an=DNSRR(rrname=qname, type=qtype, ttl=300, rdata=answer),
    )
    return [
        inner_ip(client[0], server, dns_id) / UDP(sport=client[1], dport=53) / query,
        inner_ip(server, client[0], dns_id) / UDP(sport=53, dport=client[1]) / reply,
    ]


def ping(client: str, server: str, ident: int, count: int) -> list[Packet]:
    """``count`` echo request/reply pairs (ICMP or ICMPv6 by address family)."""
    packets: list[Packet] = []
    for seq in range(1, count + 1):
        data = det_bytes(f"ping/{client}/{seq}", 56)
        if ":" in client:
            request: Packet = ICMPv6EchoRequest(id=ident, seq=seq, data=data)
            reply: Packet = ICMPv6EchoReply(id=ident, seq=seq, data=data)
        else:
            request = ICMP(type="echo-request", id=ident, seq=seq) / Raw(data)
            reply = ICMP(type="echo-reply", id=ident, seq=seq) / Raw(data)
        packets.append(inner_ip(client, server, ident + seq) / request)
        packets.append(inner_ip(server, client, ident + seq) / reply)
    return packets


# --- sample-gwlb.pcap ----------------------------------------------------------------


@dataclass(frozen=True)
class OuterVariant:
    """A legal variation of the outer encapsulation, applied to a single packet."""

    vlan: int | None = None
    ip_options: bool = False
    zero_udp_checksum: bool = False
    extra_options: bytes = b""


@dataclass
class Flow:
    """One inner flow as delivered by one GWLB endpoint.

    GWLB picks one outer UDP source port and one flow cookie per flow and uses them
    for both directions; both are derived from ``name`` here."""

    name: str
    endpoint: Endpoint
    start_ms: int
    packets: list[Packet]
    gap_us: int = 700
    variants: dict[int, OuterVariant] = field(default_factory=dict)  # packet index -> variant

    @property
    def cookie(self) -> int:
        return det_int(self.name + "/cookie", 1, 2**32 - 1)

    @property
    def gwlb_port(self) -> int:
        return det_int(self.name + "/port", 40000, 65000)

    def frame(self, index: int) -> bytes:
        inner = bytes(self.packets[index])
        variant = self.variants.get(index, OuterVariant())
        options = gwlb_options(self.endpoint, self.cookie) + variant.extra_options
        return outer_frame(
            geneve(protocol_of(inner), options) + inner,
            self.gwlb_port,
            vlans=() if variant.vlan is None else (variant.vlan,),
            ip={"options": [IPOption_Router_Alert()]} if variant.ip_options else None,
            udp={"chksum": 0} if variant.zero_udp_checksum else None,
        )


def sample_flows() -> list[Flow]:
    """The flows of sample-gwlb.pcap; start times (ms) keep the capture readable."""
    client4, client4b, client6 = "10.1.0.10", "10.1.1.20", "fd00::10"
    resolver4, resolver6 = "198.51.100.53", "2001:db8::53"
    pkgs = ((client4, 49152), ("198.51.100.10", 443))
    mirror = ((client4b, 50844), ("203.0.113.20", 443))
    unknown_option = geneve_option(UNKNOWN_OPTION_CLASS, UNKNOWN_OPTION_TYPE, det_bytes("unknown-option", 4))
    return [
        Flow("dns-pkgs", ENDPOINT_A, 0,
             dns_exchange((client4, 53001), resolver4, "pkgs.example.com", "A", "198.51.100.10", 0x1A2B),
             gap_us=1800, variants={1: OuterVariant(ip_options=True)}),
        Flow("tls-pkgs", ENDPOINT_A, 5,
             tls_connection(*pkgs, "pkgs.example.com", "tls-pkgs", response_size=12_000)),
        Flow("dns-mirror", ENDPOINT_B, 30,
             dns_exchange((client4b, 53002), resolver4, "mirror.example.net", "A", "203.0.113.20", 0x3C4D)),
        Flow("tls-mirror", ENDPOINT_B, 35,
             tls_connection(*mirror, "mirror.example.net", "tls-mirror", response_size=4000),
             variants={3: OuterVariant(extra_options=unknown_option)}),  # on the ClientHello
        # Same inner 5-tuple as tls-pkgs but from another endpoint (overlapping VPC
        # CIDRs): flow state must be keyed by endpoint, not by 5-tuple alone. It runs
        # after tls-pkgs has closed, because tshark's TCP reassembly cannot tell two
        # interleaved connections with one 5-tuple apart.
        Flow("tls-pkgs-endpoint-c", ENDPOINT_C, 50,
             tls_connection(*pkgs, "cdn.example.com", "tls-pkgs-endpoint-c")),
        Flow("dns-downloads", ENDPOINT_A, 70,
             dns_exchange((client4, 53003), resolver4, "downloads.example.org", "A", "203.0.113.80", 0x5E6F)),
        Flow("http-downloads", ENDPOINT_A, 75,
             http_download((client4, 49160), ("203.0.113.80", 80), "downloads.example.org", "http-downloads")),
        Flow("ping-v4", ENDPOINT_B, 90, ping(client4b, "198.51.100.1", 0x0B01, 4), gap_us=250_000,
             variants={0: OuterVariant(vlan=10), 1: OuterVariant(zero_udp_checksum=True)}),
        Flow("dns-v6", ENDPOINT_C, 100,
             dns_exchange((client6, 53004), resolver6, "v6.example.com", "AAAA", "2001:db8::10", 0x7A8B)),
        Flow("tls-v6", ENDPOINT_C, 105,
             tls_connection((client6, 49300), ("2001:db8::10", 443), "v6.example.com", "tls-v6", response_size=6000)),
        Flow("ping-v6", ENDPOINT_C, 130, ping(client6, "2001:db8::1", 0x0C01, 4), gap_us=250_000),
    ]


@dataclass(frozen=True)
class Record:
    """One pcap record: frame bytes, capture time and (if truncated) wire length."""

    frame: bytes
    time_us: int
    wirelen: int | None = None


def sample_records() -> list[Record]:
    timed: list[Record] = []
    for flow in sample_flows():
        for index in range(len(flow.packets)):
            timed.append(Record(flow.frame(index), EPOCH_US + flow.start_ms * 1000 + index * flow.gap_us))
    return sorted(timed, key=lambda record: record.time_us)  # stable: ties keep flow order


# --- malformed-gwlb.pcap -------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One packet of the malformed capture and the drop reason it must produce."""

    expect: str
    what: str
    frame: bytes
    wirelen: int | None = None  # set when the record is cut short (caplen < wire length)


def first_fragment(frame: bytes, keep: int) -> bytes:
    """The first fragment (MF set, offset 0) of an untagged, option-less outer IPv4
    frame, carrying the first ``keep`` bytes (a multiple of 8) of its datagram."""
    datagram = frame[14 + 20 :]
    return bytes(outer_ether() / outer_ip(flags="MF", proto=17) / Raw(datagram[:keep]))


def malformed_cases() -> list[Case]:
    """One case per drop reason, in the order a parser meets them (link, outer IPv4,
    UDP, GENEVE header, options, inner). Each frame is a well-formed GWLB packet
    except for the single defect named, so only that reason can apply."""
    syn4 = bytes(
        inner_ip("10.1.0.10", "198.51.100.10", 0x4242)
        / TCP(sport=49152, dport=443, flags="S", seq=1000, window=64240, options=[("MSS", 1460)])
    )
    echo6 = bytes(inner_ip("fd00::10", "2001:db8::1", 0) / ICMPv6EchoRequest(id=0x0C01, seq=1, data=b"egressd"))
    inner_ether = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800))  # precedes syn4
    ep = ENDPOINT_A
    cases: list[Case] = []

    def add(expect: str, what: str, frame: bytes, wirelen: int | None = None) -> None:
        cases.append(Case(expect, what, frame, wirelen))

    # Each case gets its own GWLB source port and flow cookie, derived from its index.
    def port() -> int:
        return det_int(f"malformed/{len(cases)}/port", 40000, 65000)

    def cookie() -> int:
        return det_int(f"malformed/{len(cases)}/cookie", 1, 2**32 - 1)

    def opts() -> bytes:
        return gwlb_options(ep, cookie())

    def frame(payload: bytes, **outer: Any) -> bytes:
        return outer_frame(payload, port(), **outer)

    add("ok", "control: inner IPv4 TCP SYN", gwlb_frame(syn4, ep, cookie(), port()))
    add("ok", "control: inner IPv6 ICMPv6 echo request (protocol 0x86DD)", gwlb_frame(echo6, ep, cookie(), port()))
    good = gwlb_frame(syn4, ep, cookie(), port())  # source of the cut-short frames below

    add("capture_truncated", f"record caplen 96 < wire length {len(good)}: snaplen 96 cuts the inner IPv4 header",
        good[:96], wirelen=len(good))
    add("link_not_ip", "Ethernet type 0x0806: unicast ARP request for the appliance",
        bytes(Ether(src=GWLB_MAC, dst=APPLIANCE_MAC)
              / ARP(op=1, hwsrc=GWLB_MAC, psrc=GWLB_IP, hwdst="00:00:00:00:00:00", pdst=APPLIANCE_IP)))
    add("too_many_vlan_tags", "three stacked 802.1Q tags (VLAN 10, 20, 30) before the outer IPv4",
        frame(geneve(PROTO_IPV4, opts()) + syn4, vlans=(10, 20, 30)))
    add("link_truncated", "10-byte frame: shorter than an Ethernet header", good[:10])
    add("outer_not_ipv4", "outer IPv6 carrying UDP 6081 GENEVE (GWLB only uses IPv4 outside)",
        bytes(Ether(src=GWLB_MAC, dst=APPLIANCE_MAC) / IPv6(src=GWLB_IP6, dst=APPLIANCE_IP6, hlim=255)
              / UDP(sport=port(), dport=GENEVE_PORT) / Raw(geneve(PROTO_IPV4, opts()) + syn4)))
    add("outer_ip_truncated", "Ethernet followed by only the first 12 bytes of the outer IPv4 header", good[: 14 + 12])
    add("outer_ip_bad_header", "outer IPv4 IHL 4 (16 bytes, below the 20-byte minimum)",
        frame(geneve(PROTO_IPV4, opts()) + syn4, ip={"ihl": 4}))
    payload = geneve(PROTO_IPV4, opts()) + syn4
    add("outer_ip_bad_length", "outer IPv4 total length 100 bytes more than the frame holds",
        frame(payload, ip={"len": 20 + 8 + len(payload) + 100}))
    bad_checksum = bytearray(frame(geneve(PROTO_IPV4, opts()) + syn4))
    bad_checksum[14 + 11] ^= 0xFF  # invert the low byte of the IPv4 header checksum
    add("outer_ip_bad_checksum", "outer IPv4 header checksum wrong (low byte inverted)", bytes(bad_checksum))
    add("outer_ip_fragment", "first fragment (MF=1, offset 0) of a GENEVE datagram, split after 48 bytes",
        first_fragment(frame(geneve(PROTO_IPV4, opts()) + syn4), 48))
    add("outer_not_udp", "outer IPv4 protocol 6: a TCP SYN to port 6081",
        bytes(outer_ether() / outer_ip() / TCP(sport=port(), dport=GENEVE_PORT, flags="S", seq=1, window=64240)))
    add("udp_truncated", "outer IPv4 total length 24: only 4 bytes (the two ports) of UDP header",
        bytes(outer_ether() / outer_ip(proto=17) / Raw(struct.pack("!HH", port(), GENEVE_PORT))))
    payload = geneve(PROTO_IPV4, opts()) + syn4
    add("udp_bad_length", "UDP length 16 bytes more than the IP payload (UDP checksum 0)",
        frame(payload, udp={"len": 8 + len(payload) + 16, "chksum": 0}))
    vxlan = struct.pack("!BxxxI", 0x08, 3054 << 8)  # I flag set, VNI 3054
    add("not_geneve_port", "UDP to port 4789 carrying VXLAN + an inner Ethernet frame",
        frame(vxlan + inner_ether + syn4, udp={"dport": VXLAN_PORT}))
    add("geneve_truncated", "UDP payload of 5 bytes: a cut-off GENEVE base header",
        frame(geneve(PROTO_IPV4, opts())[:5]))
    add("geneve_bad_version", "GENEVE version 1", frame(geneve(PROTO_IPV4, opts(), version=1) + syn4))
    add("geneve_oam", "GENEVE O (OAM) bit set", frame(geneve(PROTO_IPV4, opts(), oam=True) + syn4))
    add("geneve_options_truncated", "option length field says 40 bytes; the UDP payload holds only 32 (and no inner)",
        frame(geneve(PROTO_IPV4, opts(), options_len=40)))
    overrun = geneve_option(UNKNOWN_OPTION_CLASS, UNKNOWN_OPTION_TYPE, b"", length_words=2)
    add("geneve_option_malformed",
        "4th option (class 0x0132, non-critical) claims 8 data bytes, but the header's option length ends after its "
        "4-byte option header",
        frame(geneve(PROTO_IPV4, opts() + overrun) + syn4))
    critical = geneve_option(UNKNOWN_OPTION_CLASS, OPT_CRITICAL | UNKNOWN_OPTION_TYPE, det_bytes("critical", 4))
    add("geneve_unknown_critical",
        "extra option class 0x0132 type 0x90 (critical bit) after the GWLB options; "
        "header C bit set as RFC 8926 requires",
        frame(geneve(PROTO_IPV4, opts() + critical, critical=True) + syn4))
    add("geneve_bad_protocol", "GENEVE protocol 0x6558 (Ethernet) carrying an Ethernet frame",
        frame(geneve(PROTO_ETHERNET, opts()) + inner_ether + syn4))
    long_cookie = aws_option(OPT_FLOW_COOKIE, struct.pack("!Q", cookie()))
    add("gwlb_option_bad_length", "GWLB flow cookie (type 3) with 8 data bytes instead of 4",
        frame(geneve(PROTO_IPV4, endpoint_id_option(ep) + attachment_id_option(ep) + long_cookie) + syn4))
    add("gwlb_option_duplicate", "GWLB endpoint id (type 1) option present twice (same value)",
        frame(geneve(PROTO_IPV4, endpoint_id_option(ep) + opts()) + syn4))
    add("gwlb_options_missing", "endpoint id and attachment id only: no flow cookie option",
        frame(geneve(PROTO_IPV4, endpoint_id_option(ep) + attachment_id_option(ep)) + syn4))
    add("inner_empty", "the three GWLB options and no inner packet at all", frame(geneve(PROTO_IPV4, opts())))
    add("inner_version_mismatch", "GENEVE protocol 0x0800 but the inner bytes are an IPv6 packet",
        frame(geneve(PROTO_IPV4, opts()) + echo6))
    return cases


# --- Output --------------------------------------------------------------------------


def write_pcap(path: Path, records: list[Record]) -> None:
    """Classic little-endian microsecond pcap, Ethernet link type."""
    writer = PcapWriter(str(path), linktype=DLT_EN10MB, endianness="<", snaplen=SNAPLEN)
    writer.write_header(None)
    for record in records:
        sec, usec = divmod(record.time_us, 1_000_000)
        writer.write_packet(record.frame, sec=sec, usec=usec, wirelen=record.wirelen)
    writer.close()


def main() -> None:
    sample = sample_records()
    write_pcap(HERE / "sample-gwlb.pcap", sample)

    cases = malformed_cases()
    # One hour after the samples, 1 ms apart.
    start_us = EPOCH_US + 3_600_000_000
    write_pcap(
        HERE / "malformed-gwlb.pcap",
        [Record(case.frame, start_us + index * 1000, case.wirelen) for index, case in enumerate(cases)],
    )
    manifest = [{"index": index, "expect": case.expect, "what": case.what} for index, case in enumerate(cases)]
    (HERE / "malformed-gwlb.json").write_text(json.dumps(manifest, indent=2) + "\n")

    print(f"sample-gwlb.pcap: {len(sample)} packets; malformed-gwlb.pcap: {len(cases)} packets")


if __name__ == "__main__":
    main()
