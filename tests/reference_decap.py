"""Slow, obvious twin of geneve.decap for one frame, written from the specifications.

Sources: IEEE 802.1Q (VLAN tags), RFC 791 (IPv4), RFC 768 (UDP), RFC 8926 (GENEVE:
version 0, Opt Len in 4-byte words, O bit = control packet, options TLV with a 5-bit
length in words and the critical bit as the high bit of the type, unknown critical
option = drop), AWS GWLB (options of class 0x0108: type 1 endpoint id 8 bytes, type 2
attachment id 8 bytes, type 3 flow cookie 4 bytes; inner payload raw IPv4 / IPv6).
dpkt decodes the link-layer headers, IPv4 and UDP; GENEVE is walked by hand.

The checks run in the order the engine promises (capture, link, outer IPv4, UDP,
GENEVE header, options walk, protocol type, GWLB options present, inner), so that the
first failure names the same reason as the kernel.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import dpkt

from egressd.engine.reasons import NAMES

LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL = 1, 101, 113
LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 228, 229, 276
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)  # 802.1Q C-tag, 802.1ad S-tag, legacy QinQ
MAX_VLAN_TAGS = 2
ETHERTYPE_IPV4, ETHERTYPE_IPV6 = 0x0800, 0x86DD
GENEVE_PORT = 6081
GWLB_CLASS = 0x0108
# GWLB option type -> (column it fills, data length in bytes)
GWLB_OPTIONS = {1: ("gwlb_eni", 8), 2: ("gwlb_attach", 8), 3: ("gwlb_cookie", 4)}


@dataclass(frozen=True)
class Decoded:
    """What decap should make of a frame: a reason name and, if "ok", the columns."""

    reason: str
    fields: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.reason in NAMES, self.reason


def _be16(data: bytes, pos: int) -> int:
    return struct.unpack_from(">H", data, pos)[0]


def _network_layer(data: bytes, linktype: int) -> tuple[str, int, int]:
    """(reason, offset of the network header, its EtherType) for a link type."""
    if linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return "link_truncated", 0, 0
        # 6 bytes destination, 6 source, then TPID+TCI pairs until the real EtherType.
        type_at = 12
        ethertype = _be16(data, type_at)
        tags = 0
        while ethertype in VLAN_TPIDS:
            if tags == MAX_VLAN_TAGS:
                return "too_many_vlan_tags", 0, 0
            if len(data) < type_at + 4 + 2:
                return "link_truncated", 0, 0
            type_at += 4
            ethertype = _be16(data, type_at)
            tags += 1
        return "ok", type_at + 2, ethertype
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        # No link header: the IP version nibble says what follows.
        if len(data) < 1:
            return "link_truncated", 0, 0
        version = data[0] >> 4
        return "ok", 0, {4: ETHERTYPE_IPV4, 6: ETHERTYPE_IPV6}.get(version, 0)
    if linktype == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            return "link_truncated", 0, 0
        return "ok", 16, dpkt.sll.SLL(data).ethtype
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < 20:
            return "link_truncated", 0, 0
        return "ok", 20, dpkt.sll2.SLL2(data).ethtype
    return "link_unsupported", 0, 0


def reference_decap(frame: bytes, linktype: int, caplen: int, wirelen: int,
                    require_gwlb: bool = True) -> Decoded:
    """Decode one captured frame (its first `caplen` bytes) as GWLB GENEVE."""
    data = bytes(frame[:caplen])
    if caplen < wirelen:
        return Decoded("capture_truncated")

    reason, l3, ethertype = _network_layer(data, linktype)
    if reason != "ok":
        return Decoded(reason)
    if ethertype == ETHERTYPE_IPV6:
        return Decoded("outer_not_ipv4")
    if ethertype != ETHERTYPE_IPV4:
        return Decoded("link_not_ip")

    # Outer IPv4 (RFC 791).  dpkt refuses an IHL below 5, so the first byte is read
    # by hand before dpkt sees the header.
    packet = data[l3:]
    if len(packet) < 20:
        return Decoded("outer_ip_truncated")
    if packet[0] >> 4 != 4:
        return Decoded("outer_not_ipv4")
    header_len = (packet[0] & 0x0F) * 4
    total_len = _be16(packet, 2)
    if header_len < 20 or total_len < header_len:
        return Decoded("outer_ip_bad_header")
    if len(packet) < header_len:
        return Decoded("outer_ip_truncated")
    if total_len > len(packet):
        return Decoded("outer_ip_bad_length")
    ip = dpkt.ip.IP(packet)
    assert ip.len == total_len and ip.hl * 4 == header_len
    # A correct header sums (checksum included) to -0; dpkt's in_cksum is its complement.
    if dpkt.in_cksum(packet[:header_len]) != 0:
        return Decoded("outer_ip_bad_checksum")
    if ip.mf or ip.offset:
        return Decoded("outer_ip_fragment")
    if ip.p != dpkt.ip.IP_PROTO_UDP:
        return Decoded("outer_not_udp")

    # UDP (RFC 768): its length may be shorter than the IPv4 payload, never longer.
    ip_payload = packet[header_len:total_len]
    if len(ip_payload) < 8:
        return Decoded("udp_truncated")
    udp = dpkt.udp.UDP(ip_payload)
    if udp.ulen < 8 or udp.ulen > len(ip_payload):
        return Decoded("udp_bad_length")
    if udp.dport != GENEVE_PORT:
        return Decoded("not_geneve_port")

    # GENEVE base header (RFC 8926 section 3.4).
    geneve = ip_payload[8:udp.ulen]
    if len(geneve) < 8:
        return Decoded("geneve_truncated")
    version = geneve[0] >> 6
    options_len = (geneve[0] & 0x3F) * 4
    control_packet = bool(geneve[1] & 0x80)
    protocol = _be16(geneve, 2)
    vni = int.from_bytes(geneve[4:7], "big")
    if version != 0:
        return Decoded("geneve_bad_version")
    if control_packet:
        return Decoded("geneve_oam")
    if len(geneve) - 8 < options_len:
        return Decoded("geneve_options_truncated")

    # Options (RFC 8926 section 3.5): class, type (high bit: critical), length in words.
    options = geneve[8:8 + options_len]
    gwlb: dict[str, int] = {}
    pos = 0
    while pos < len(options):
        if len(options) - pos < 4:
            return Decoded("geneve_option_malformed")
        option_class, option_type, length_byte = struct.unpack_from(">HBB", options, pos)
        value = options[pos + 4:pos + 4 + (length_byte & 0x1F) * 4]
        if len(value) < (length_byte & 0x1F) * 4:
            return Decoded("geneve_option_malformed")
        if option_class == GWLB_CLASS and option_type in GWLB_OPTIONS:
            column, size = GWLB_OPTIONS[option_type]
            if len(value) != size:
                return Decoded("gwlb_option_bad_length")
            if column in gwlb:
                return Decoded("gwlb_option_duplicate")
            gwlb[column] = int.from_bytes(value, "big")
        elif option_type & 0x80:
            return Decoded("geneve_unknown_critical")
        pos += 4 + len(value)

    if protocol not in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
        return Decoded("geneve_bad_protocol")
    if require_gwlb and len(gwlb) != len(GWLB_OPTIONS):
        return Decoded("gwlb_options_missing")
    inner = geneve[8 + options_len:]
    if not inner:
        return Decoded("inner_empty")
    if inner[0] >> 4 != {ETHERTYPE_IPV4: 4, ETHERTYPE_IPV6: 6}[protocol]:
        return Decoded("inner_version_mismatch")

    geneve_at = l3 + header_len + 8
    return Decoded("ok", {
        "l3": l3,
        "geneve": geneve_at,
        "inner": geneve_at + 8 + options_len,
        "inner_len": len(inner),
        "gproto": protocol,
        "vni": vni,
        "outer_src": int.from_bytes(ip.src, "big"),
        "outer_dst": int.from_bytes(ip.dst, "big"),
        "outer_sport": udp.sport,
        "gwlb_eni": gwlb.get("gwlb_eni", 0),
        "gwlb_attach": gwlb.get("gwlb_attach", 0),
        "gwlb_cookie": gwlb.get("gwlb_cookie", 0),
    })
