"""Slow, obvious twin of engine.parse for one inner IP packet, built on dpkt.

Sources: RFC 791 (IPv4 and its fragments' 8-byte rule), RFC 8200 (IPv6: extension
headers, hop-by-hop first, the fragment header and its 8-byte rule), RFC 4302 (AH
length in 4-byte words), RFC 9293 (TCP data offset and options), RFC 768 (UDP), RFC
792 / RFC 4443 (ICMP, ICMPv6: which types are errors, what they quote), RFC 1858 (tiny
first fragments), RFC 6946 (atomic fragments are not fragments).

dpkt decodes the header fields; the checks dpkt does not make (lengths against the
bytes present, the extension-header bound, TCP option bounds, UDP length) are hand
code, run in the order the engine promises so that the first failure names the same
reason.  dpkt's own IPv6 walk is not used: it has no bound, counts ESP as an
extension header and raises on option contents egressd does not inspect.

The rules one fragment shows it keeps (8-byte blocks, the 65,535-byte end) bind the
packets egressd forwards, not the ones ICMP errors quote: a quote is cut anywhere.
What needs more than one fragment is engine.frag's.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

import dpkt

from egressd.engine.parse import (MAX_EXT_HEADERS, PF_FRAGMENT, PF_ICMP_ERROR, PF_IPV6_EXT,
                                  PF_MORE_FRAGMENTS)
from egressd.engine.reasons import NAMES

HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS = 0, 43, 44, 51, 60
EXTENSION_HEADERS = (HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS)
TCP, UDP, ICMP, ICMPV6, SCTP = 6, 17, 1, 58, 132
ICMP_ERRORS = (3, 4, 5, 11, 12)  # unreachable, quench, redirect, time exceeded, parameter
ICMP_ECHO = (0, 8)
ICMPV6_ECHO = (128, 129)


@dataclass(frozen=True)
class Parsed:
    """What parse should make of an inner packet: a reason name and, if "ok", the
    columns.  Offsets (`l4`, `payload`) count from the IP header; `l4` None: none."""

    reason: str
    fields: dict[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.reason in NAMES, self.reason


@dataclass
class IPHeader:
    reason: str
    version: int = 0
    proto: int = 0
    src: int = 0            # 128-bit, IPv4 as ::ffff:a.b.c.d
    dst: int = 0
    header_len: int = 0     # where the transport header starts
    total_len: int = 0
    pflags: int = 0
    frag_id: int = 0
    frag_off: int = 0       # bytes


def _be16(data: bytes, pos: int) -> int:
    return struct.unpack_from(">H", data, pos)[0]


def _mapped(v4: bytes) -> int:
    return int(ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(v4)}"))


def _ipv4(data: bytes, quoted: bool) -> IPHeader:
    if len(data) < 20:
        return IPHeader("inner_ip_truncated")
    header_len = (data[0] & 0x0F) * 4
    total_len = _be16(data, 2)
    if header_len < 20 or total_len < header_len:
        return IPHeader("inner_ip_bad_header")
    if len(data) < header_len:
        return IPHeader("inner_ip_truncated")
    if quoted:  # an ICMP error quotes the header and (at least) 8 bytes of what follows
        total_len = min(total_len, len(data))
    else:
        if total_len > len(data):
            return IPHeader("inner_ip_bad_length")
        if dpkt.in_cksum(data[:header_len]) != 0:
            return IPHeader("inner_ip_bad_checksum")
    ip = dpkt.ip.IP()
    dpkt.Packet.unpack(ip, data[:20])  # the fixed header only: no guessing at what follows
    frag_off = ip.offset * 8
    pflags = PF_FRAGMENT | PF_MORE_FRAGMENTS if ip.mf else 0
    if frag_off:
        pflags |= PF_FRAGMENT
    if not quoted and not fragment_fits(bool(ip.mf), frag_off, total_len - header_len):
        return IPHeader("frag_bad_offset")
    return IPHeader("ok", 4, ip.p, _mapped(ip.src), _mapped(ip.dst), header_len, total_len,
                    pflags, ip.id, frag_off)


def fragment_fits(more: bool, offset: int, length: int) -> bool:
    """A non-final fragment carries whole 8-byte blocks; none ends past 65,535 bytes."""
    return not (more and length % 8) and offset + length <= 65535


def _ext_header_len(kind: int, data: bytes) -> int:
    if kind == FRAGMENT:
        return 8
    if kind == AH:  # RFC 4302 2.2: length in 4-byte words, minus 2
        return (data[1] + 2) * 4
    return (data[1] + 1) * 8  # RFC 8200 4.3-4.6: 8-byte units, not counting the first


def _ipv6(data: bytes, quoted: bool) -> IPHeader:
    if len(data) < 40:
        return IPHeader("inner_ip_truncated")
    # dpkt.Packet.unpack reads only the fixed header (IP6.unpack would also walk).
    ip = dpkt.ip6.IP6()
    dpkt.Packet.unpack(ip, data[:40])
    total_len = 40 + ip.plen
    if quoted:
        total_len = min(total_len, len(data))
    elif total_len > len(data):
        return IPHeader("inner_ip_bad_length")
    kind, pos, pflags, frag_id, frag_off = ip.nxt, 40, 0, 0, 0
    walked = 0
    fragment_headers = 0
    while kind in EXTENSION_HEADERS:
        if walked == MAX_EXT_HEADERS:
            return IPHeader("ipv6_too_many_ext_headers")
        if kind == HOPOPTS and walked:
            return IPHeader("ipv6_hop_by_hop_not_first")
        ext = data[pos:total_len]
        if len(ext) < 8:
            return IPHeader("ipv6_ext_header_truncated")
        pflags |= PF_IPV6_EXT
        if kind == FRAGMENT:
            fragment_headers += 1
            if fragment_headers == 2:  # which one would say where the data goes?
                return IPHeader("ipv6_two_fragment_headers")
            fh = dpkt.ip6.IP6FragmentHeader(ext[:8])
            frag_id, frag_off = fh.id, fh.frag_off * 8
            if frag_off or fh.m_flag:  # else an atomic fragment: no rule to keep
                pflags |= PF_FRAGMENT
                if fh.m_flag:
                    pflags |= PF_MORE_FRAGMENTS
                if not quoted and not fragment_fits(bool(fh.m_flag), frag_off, len(ext) - 8):
                    return IPHeader("frag_bad_offset")
        length = _ext_header_len(kind, ext)
        if len(ext) < length:
            return IPHeader("ipv6_ext_header_truncated")
        kind = ext[0]
        pos += length
        walked += 1
        if frag_off:  # what follows a non-first fragment's header is data
            break
    return IPHeader("ok", 6, kind, int.from_bytes(ip.src, "big"), int.from_bytes(ip.dst, "big"),
                    pos, total_len, pflags, frag_id, frag_off)


def ip_header(data: bytes, quoted: bool = False) -> IPHeader:
    """The IP header at the start of `data` (all the bytes there are)."""
    if not data:
        return IPHeader("inner_ip_truncated")
    version = data[0] >> 4
    if version == 4:
        return _ipv4(data, quoted)
    if version == 6:
        return _ipv6(data, quoted)
    return IPHeader("inner_ip_bad_header", version)


def _tcp_options_ok(options: bytes) -> bool:
    """Every option inside the header (RFC 9293 3.2); end-of-list ends the walk."""
    pos = 0
    while pos < len(options):
        kind = options[pos]
        if kind == 0:
            return True
        if kind == 1:
            pos += 1
            continue
        if len(options) - pos < 2 or not 2 <= options[pos + 1] <= len(options) - pos:
            return False
        pos += options[pos + 1]
    return True


def _is_echo(proto: int, icmp_type: int) -> bool:
    return icmp_type in (ICMP_ECHO if proto == ICMP else ICMPV6_ECHO)


def _is_error(proto: int, icmp_type: int) -> bool:
    return icmp_type in ICMP_ERRORS if proto == ICMP else icmp_type < 128  # RFC 4443 2.1


def quoted_tuple(data: bytes) -> dict[str, int] | None:
    """The tuple of the packet an ICMP error quotes, or None if it quotes no IP header."""
    ip = ip_header(data, quoted=True)
    if ip.reason != "ok":
        return None
    sport = dport = 0
    transport = data[ip.header_len:ip.total_len]
    if ip.frag_off == 0:
        if ip.proto in (TCP, UDP, SCTP) and len(transport) >= 4:
            sport, dport = struct.unpack_from(">HH", transport)
        elif ip.proto in (ICMP, ICMPV6) and len(transport) >= 8 and _is_echo(ip.proto, transport[0]):
            sport = dport = _be16(transport, 4)
    return {"rel_proto": ip.proto, "rel_src": ip.src, "rel_dst": ip.dst,
            "rel_sport": sport, "rel_dport": dport}


def reference_parse(packet: bytes) -> Parsed:
    """Parse one inner IP packet (`packet`: every byte GENEVE carried after its header)."""
    ip = ip_header(packet)
    if ip.reason != "ok":
        return Parsed(ip.reason)
    cols: dict[str, int | None] = {
        "ipver": ip.version, "proto": ip.proto, "src": ip.src, "dst": ip.dst,
        "ip_len": ip.total_len, "pflags": ip.pflags, "frag_id": ip.frag_id, "frag_off": ip.frag_off,
        "sport": 0, "dport": 0, "icmp_type": 0, "icmp_code": 0, "tcp_flags": 0, "tcp_seq": 0,
        "tcp_ack": 0, "l4": None, "payload": None, "payload_len": 0,
        "rel_proto": 0, "rel_src": 0, "rel_dst": 0, "rel_sport": 0, "rel_dport": 0,
    }
    if ip.frag_off:  # a non-first fragment: no transport header to read
        return Parsed("ok", cols)
    t = ip.header_len
    segment = packet[t:ip.total_len]
    first_fragment = bool(ip.pflags & PF_MORE_FRAGMENTS)
    cols.update(l4=t, payload=t, payload_len=len(segment))

    if ip.proto == TCP:
        if len(segment) < 20:
            return Parsed("frag_tiny" if first_fragment else "tcp_truncated")
        data_offset = (segment[12] >> 4) * 4
        if data_offset < 20:
            return Parsed("tcp_bad_header")
        if data_offset > len(segment):
            return Parsed("frag_tiny" if first_fragment else "tcp_bad_header")
        if not _tcp_options_ok(segment[20:data_offset]):
            return Parsed("tcp_bad_options")
        tcp = dpkt.tcp.TCP(segment)
        cols.update(sport=tcp.sport, dport=tcp.dport, tcp_seq=tcp.seq, tcp_ack=tcp.ack,
                    tcp_flags=tcp.flags & 0xFF, payload=t + data_offset,
                    payload_len=len(segment) - data_offset)
    elif ip.proto == UDP:
        if len(segment) < 8:
            return Parsed("frag_tiny" if first_fragment else "udp_inner_truncated")
        udp = dpkt.udp.UDP(segment[:8])
        # A first fragment's UDP length covers the whole datagram, not this fragment.
        if udp.ulen < 8 or (udp.ulen > len(segment) and not first_fragment):
            return Parsed("udp_inner_bad_length")
        cols.update(sport=udp.sport, dport=udp.dport, payload=t + 8,
                    payload_len=(len(segment) if first_fragment else udp.ulen) - 8)
    elif (ip.proto, ip.version) in ((ICMP, 4), (ICMPV6, 6)):
        if len(segment) < 4:
            return Parsed("icmp_truncated")
        # Only the 4-byte common header: dpkt would also decode (and guess at) the body.
        icmp = (dpkt.icmp.ICMP if ip.proto == ICMP else dpkt.icmp6.ICMP6)(segment[:4])
        cols.update(icmp_type=icmp.type, icmp_code=icmp.code)
        echo, error = _is_echo(ip.proto, icmp.type), _is_error(ip.proto, icmp.type)
        if (echo or error) and len(segment) < 8:
            return Parsed("icmp_truncated")
        if echo:
            ident = (dpkt.icmp.ICMP.Echo if ip.proto == ICMP else dpkt.icmp6.ICMP6.Echo)(segment[4:8]).id
            cols.update(sport=ident, dport=ident, payload=t + 8, payload_len=len(segment) - 8)
        elif error and not ip.pflags & PF_FRAGMENT:  # quote read once reassembled
            quote = quoted_tuple(segment[8:])
            if quote is None:
                return Parsed("icmp_bad_quote")
            cols.update(quote, pflags=ip.pflags | PF_ICMP_ERROR)
    return Parsed("ok", cols)
