"""Stage 2: inner IPv4 / IPv6 (extension headers) and TCP / UDP / ICMP / ICMPv6.

Input per row: `ip` (absolute offset of the inner IP header) and `ip_len` (bytes
available there); output: the header columns of PacketBatch, `ip_len` narrowed to
the IP total length.  Every read is bounded by the bytes available; the IPv6
extension-header walk stops after MAX_EXT_HEADERS; TCP options are walked within the
data offset.  ICMP errors also yield the tuple of the packet they quote (rel_*), so
the flow stage can tie them to their flow.  Nothing is reassembled here: fragments are
flagged, and engine.frag hands reassembled datagrams back to this stage.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressd.engine.batch import PacketBatch
from egressd.engine.reasons import N_REASONS, Reason, Verdict
from egressd.engine.wire import ones_sum, u8, u16, u32, u64

# pflags bits
PF_FRAGMENT = 0x01       # an IP fragment (offset > 0 or more fragments follow)
PF_MORE_FRAGMENTS = 0x02
PF_ICMP_ERROR = 0x04     # ICMP/ICMPv6 error; rel_* hold the quoted packet's tuple
PF_REASSEMBLED = 0x08    # ip/l4/payload point at a reassembled datagram
PF_IPV6_EXT = 0x10       # IPv6 extension headers were walked

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
MAX_EXT_HEADERS = 8
_V4_MAPPED = np.uint64(0x0000FFFF00000000)

_EXT_HBH, _EXT_ROUTING, EXT_FRAGMENT, EXT_AH, _EXT_DSTOPTS = 0, 43, 44, 51, 60


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def ext_header_len(buf, h, nh):
    """Length of the IPv6 extension header `nh` at h (not the fragment header, always
    8): AH counts 4-byte words minus 2, the others 8-byte words minus 1.  The caller
    has checked that its first two bytes are there."""
    if nh == EXT_AH:
        return (np.int64(u8(buf, h + 1)) + 2) * 4
    return (np.int64(u8(buf, h + 1)) + 1) * 8


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _is_ext(nh):
    return nh == _EXT_HBH or nh == _EXT_ROUTING or nh == EXT_FRAGMENT or nh == EXT_AH or nh == _EXT_DSTOPTS


@njit(cache=True, nogil=True, _nrt=False)
def _ip(buf, p, avail, quoted):
    """IP header at p with `avail` bytes.

    A quoted header (inside an ICMP error) is usually cut short, so its lengths are
    not checked against `avail` and its checksum is not verified.  Returns (reason,
    ipver, proto, src_hi, src_lo, dst_hi, dst_lo, l4 offset from p, IP length,
    pflags, frag_id, frag_off).
    """
    z = np.uint64(0)
    if avail < 1:
        return Reason.INNER_IP_TRUNCATED, 0, 0, z, z, z, z, 0, 0, 0, 0, 0
    ver = u8(buf, p) >> 4
    if ver == 4:
        if avail < 20:
            return Reason.INNER_IP_TRUNCATED, 4, 0, z, z, z, z, 0, 0, 0, 0, 0
        ihl = np.int64(u8(buf, p) & 0x0F) * 4
        tot = np.int64(u16(buf, p + 2))
        if ihl < 20 or tot < ihl:
            return Reason.INNER_IP_BAD_HEADER, 4, 0, z, z, z, z, 0, 0, 0, 0, 0
        if avail < ihl:
            return Reason.INNER_IP_TRUNCATED, 4, 0, z, z, z, z, 0, 0, 0, 0, 0
        if quoted:
            tot = min(tot, avail)
        else:
            if tot > avail:
                return Reason.INNER_IP_BAD_LENGTH, 4, 0, z, z, z, z, 0, 0, 0, 0, 0
            if ones_sum(buf, p, ihl) != 0xFFFF:
                return Reason.INNER_IP_BAD_CHECKSUM, 4, 0, z, z, z, z, 0, 0, 0, 0, 0
        fo = u16(buf, p + 6)
        frag_off = np.int64(fo & 0x1FFF) * 8
        flags = 0
        if fo & 0x2000:
            flags |= PF_MORE_FRAGMENTS | PF_FRAGMENT
        if frag_off:
            flags |= PF_FRAGMENT
        # every fragment but the last carries a multiple of 8 bytes (RFC 791); a quote
        # is cut short, so only a packet of our own is held to it
        if not quoted and ((fo & 0x2000 and (tot - ihl) % 8) or frag_off + tot - ihl > 65535):
            return Reason.FRAG_BAD_OFFSET, 4, 0, z, z, z, z, 0, 0, 0, 0, 0
        return (Reason.OK, 4, u8(buf, p + 9), z, _V4_MAPPED | np.uint64(u32(buf, p + 12)), z,
                _V4_MAPPED | np.uint64(u32(buf, p + 16)), ihl, tot, flags, u16(buf, p + 4), frag_off)
    if ver == 6:
        if avail < 40:
            return Reason.INNER_IP_TRUNCATED, 6, 0, z, z, z, z, 0, 0, 0, 0, 0
        tot = 40 + np.int64(u16(buf, p + 4))
        if quoted:
            tot = min(tot, avail)
        elif tot > avail:
            return Reason.INNER_IP_BAD_LENGTH, 6, 0, z, z, z, z, 0, 0, 0, 0, 0
        nh = u8(buf, p + 6)
        q = 40
        flags = 0
        frag_id = np.uint32(0)
        frag_off = 0
        steps = 0
        seen_frag = False
        while _is_ext(nh):
            if steps == MAX_EXT_HEADERS:
                return Reason.IPV6_TOO_MANY_EXT_HEADERS, 6, 0, z, z, z, z, 0, 0, 0, 0, 0
            if nh == _EXT_HBH and steps:
                return Reason.IPV6_HOP_BY_HOP_NOT_FIRST, 6, 0, z, z, z, z, 0, 0, 0, 0, 0
            if tot - q < 8:
                return Reason.IPV6_EXT_HEADER_TRUNCATED, 6, 0, z, z, z, z, 0, 0, 0, 0, 0
            flags |= PF_IPV6_EXT
            if nh == EXT_FRAGMENT:
                if seen_frag:
                    return Reason.IPV6_TWO_FRAGMENT_HEADERS, 6, 0, z, z, z, z, 0, 0, 0, 0, 0
                seen_frag = True
                fo = u16(buf, p + q + 2)
                frag_id = u32(buf, p + q + 4)
                frag_off = np.int64(fo & 0xFFF8)
                hlen = 8
                if frag_off or fo & 1:  # not an atomic fragment (RFC 6946)
                    flags |= PF_FRAGMENT
                    if fo & 1:
                        flags |= PF_MORE_FRAGMENTS
                    if not quoted and ((fo & 1 and (tot - q - 8) % 8) or frag_off + tot - q - 8 > 65535):
                        return Reason.FRAG_BAD_OFFSET, 6, 0, z, z, z, z, 0, 0, 0, 0, 0
            else:
                hlen = ext_header_len(buf, p + q, nh)
            if tot - q < hlen:
                return Reason.IPV6_EXT_HEADER_TRUNCATED, 6, 0, z, z, z, z, 0, 0, 0, 0, 0
            nh = u8(buf, p + q)
            q += hlen
            steps += 1
            if frag_off:  # what follows a non-first fragment's header is data
                break
        return (Reason.OK, 6, nh, u64(buf, p + 8), u64(buf, p + 16), u64(buf, p + 24),
                u64(buf, p + 32), q, tot, flags, frag_id, frag_off)
    return Reason.INNER_IP_BAD_HEADER, ver, 0, z, z, z, z, 0, 0, 0, 0, 0


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _is_icmp_error(proto, t):
    if proto == PROTO_ICMP:
        return t == 3 or t == 4 or t == 5 or t == 11 or t == 12
    return t < 128  # ICMPv6: types 0-127 are errors (RFC 4443 2.1)


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _is_echo(proto, t):
    if proto == PROTO_ICMP:
        return t == 8 or t == 0
    return t == 128 or t == 129


@njit(cache=True, nogil=True, _nrt=False)
def _quote(buf, p, avail):
    """The packet quoted by an ICMP error: (ok, proto, src_hi, src_lo, dst_hi, dst_lo,
    sport, dport).  Only its first 8 transport bytes are guaranteed (RFC 792)."""
    z = np.uint64(0)
    r, ver, proto, shi, slo, dhi, dlo, l4, tot, flags, _fid, foff = _ip(buf, p, avail, True)
    if r != Reason.OK:
        return False, 0, z, z, z, z, 0, 0
    sport = np.uint32(0)
    dport = np.uint32(0)
    left = tot - l4
    if foff == 0:
        if (proto == PROTO_TCP or proto == PROTO_UDP or proto == PROTO_SCTP) and left >= 4:
            sport = u16(buf, p + l4)
            dport = u16(buf, p + l4 + 2)
        elif (proto == PROTO_ICMP or proto == PROTO_ICMPV6) and left >= 8:
            if _is_echo(proto, u8(buf, p + l4)):
                sport = u16(buf, p + l4 + 4)
                dport = sport
    return True, proto, shi, slo, dhi, dlo, sport, dport


@njit(cache=True, nogil=True, _nrt=False)
def _tcp_options_ok(buf, p, end):
    """Walk TCP options in [p, end) (at most 40 bytes; every step advances)."""
    while p < end:
        kind = u8(buf, p)
        if kind == 0:
            return True
        if kind == 1:
            p += 1
            continue
        if end - p < 2:
            return False
        olen = np.int64(u8(buf, p + 1))
        if olen < 2 or end - p < olen:
            return False
        p += olen
    return True


@njit(cache=True, nogil=True, _nrt=False)
def _parse(buf, n, only_reassembled, verdict, reason, counts, ip, ip_len, ipver, proto, src_hi,
           src_lo, dst_hi, dst_lo, sport, dport, icmp_type, icmp_code, tcp_flags, tcp_seq, tcp_ack,
           l4, payload, payload_len, pflags, frag_id, frag_off, rel_proto, rel_src_hi, rel_src_lo,
           rel_dst_hi, rel_dst_lo, rel_sport, rel_dport):
    # Per-packet helpers take `buf` and scalars only (see geneve.decap).
    for i in range(n):
        if verdict[i] == Verdict.DROP:
            continue
        keep = pflags[i] & PF_REASSEMBLED
        if only_reassembled and not keep:
            continue
        p = ip[i]
        r, v, pr, shi, slo, dhi, dlo, hl, tot, fl, fid, foff = _ip(buf, p, np.int64(ip_len[i]), False)
        ipver[i] = v
        proto[i] = pr
        src_hi[i] = shi
        src_lo[i] = slo
        dst_hi[i] = dhi
        dst_lo[i] = dlo
        ip_len[i] = tot
        pflags[i] = fl | keep
        frag_id[i] = fid
        frag_off[i] = foff
        sport[i] = 0
        dport[i] = 0
        icmp_type[i] = 0
        icmp_code[i] = 0
        tcp_flags[i] = 0
        tcp_seq[i] = 0
        tcp_ack[i] = 0
        l4[i] = 0
        payload[i] = 0
        payload_len[i] = 0
        rel_proto[i] = 0
        rel_src_hi[i] = 0
        rel_src_lo[i] = 0
        rel_dst_hi[i] = 0
        rel_dst_lo[i] = 0
        rel_sport[i] = 0
        rel_dport[i] = 0
        if r == Reason.OK and foff == 0:
            t = p + hl
            left = tot - hl
            first_frag = fl & PF_MORE_FRAGMENTS
            l4[i] = t
            payload[i] = t
            payload_len[i] = left
            if pr == PROTO_TCP:
                if left < 20:
                    r = Reason.FRAG_TINY if first_frag else Reason.TCP_TRUNCATED
                else:
                    doff = np.int64(u8(buf, t + 12) >> 4) * 4
                    if doff < 20:
                        r = Reason.TCP_BAD_HEADER
                    elif doff > left:
                        r = Reason.FRAG_TINY if first_frag else Reason.TCP_BAD_HEADER
                    elif not _tcp_options_ok(buf, t + 20, t + doff):
                        r = Reason.TCP_BAD_OPTIONS
                    else:
                        sport[i] = u16(buf, t)
                        dport[i] = u16(buf, t + 2)
                        tcp_seq[i] = u32(buf, t + 4)
                        tcp_ack[i] = u32(buf, t + 8)
                        tcp_flags[i] = u8(buf, t + 13)
                        payload[i] = t + doff
                        payload_len[i] = left - doff
            elif pr == PROTO_UDP:
                if left < 8:
                    r = Reason.FRAG_TINY if first_frag else Reason.UDP_INNER_TRUNCATED
                else:
                    ulen = np.int64(u16(buf, t + 4))
                    # A first fragment's UDP length covers the whole datagram.
                    if ulen < 8 or (ulen > left and not first_frag):
                        r = Reason.UDP_INNER_BAD_LENGTH
                    else:
                        sport[i] = u16(buf, t)
                        dport[i] = u16(buf, t + 2)
                        payload[i] = t + 8
                        payload_len[i] = (left if first_frag else ulen) - 8
            elif (pr == PROTO_ICMP and v == 4) or (pr == PROTO_ICMPV6 and v == 6):
                if left < 4:
                    r = Reason.ICMP_TRUNCATED
                else:
                    ty = u8(buf, t)
                    icmp_type[i] = ty
                    icmp_code[i] = u8(buf, t + 1)
                    if _is_echo(pr, ty) or _is_icmp_error(pr, ty):
                        if left < 8:
                            r = Reason.ICMP_TRUNCATED
                        elif _is_echo(pr, ty):
                            sport[i] = u16(buf, t + 4)
                            dport[i] = sport[i]
                            payload[i] = t + 8
                            payload_len[i] = left - 8
                        elif not fl & PF_FRAGMENT:
                            ok, qp, qshi, qslo, qdhi, qdlo, qs, qd = _quote(buf, t + 8, left - 8)
                            if not ok:
                                r = Reason.ICMP_BAD_QUOTE
                            else:
                                pflags[i] |= PF_ICMP_ERROR
                                rel_proto[i] = qp
                                rel_src_hi[i] = qshi
                                rel_src_lo[i] = qslo
                                rel_dst_hi[i] = qdhi
                                rel_dst_lo[i] = qdlo
                                rel_sport[i] = qs
                                rel_dport[i] = qd
        if r != Reason.OK:
            verdict[i] = Verdict.DROP
            reason[i] = r
            counts[r] += 1


def parse(b: PacketBatch, counts: np.ndarray) -> None:
    """Parse the inner packet of every row decap accepted; drop malformed ones (counted)."""
    if counts.shape != (N_REASONS,) or counts.dtype != np.uint64:
        raise ValueError(f"counts must be uint64[{N_REASONS}]")
    n = b.n
    np.add(b.off[:n], b.inner[:n], out=b.ip[:n])
    b.ip_len[:n] = b.inner_len[:n]
    b.pflags[:n] = 0
    _run(b, counts, False)


def reparse(b: PacketBatch, counts: np.ndarray) -> None:
    """Parse again the rows engine.frag pointed at a reassembled datagram."""
    _run(b, counts, True)


def _run(b: PacketBatch, counts: np.ndarray, only_reassembled: bool) -> None:
    _parse(b.buf, b.n, only_reassembled, b.verdict, b.reason, counts, b.ip, b.ip_len, b.ipver,
           b.proto, b.src_hi, b.src_lo, b.dst_hi, b.dst_lo, b.sport, b.dport, b.icmp_type,
           b.icmp_code, b.tcp_flags, b.tcp_seq, b.tcp_ack, b.l4, b.payload, b.payload_len,
           b.pflags, b.frag_id, b.frag_off, b.rel_proto, b.rel_src_hi, b.rel_src_lo, b.rel_dst_hi,
           b.rel_dst_lo, b.rel_sport, b.rel_dport)
