"""Stage 1: outer link / IPv4 / UDP 6081 / GENEVE / GWLB options -> batch columns.

Every read is checked against the captured length; the option walk is bounded by
the header's option length and advances at least 4 bytes a step.  A packet that
fails any check gets a drop reason and is counted; nothing raises.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressd.engine.batch import PacketBatch
from egressd.engine.pcapio import (L3_UNKNOWN, LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6,
                                   LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW)
from egressd.engine.reasons import N_REASONS, Reason, Verdict
from egressd.engine.wire import ones_sum, u8, u16, u32, u64
from egressd.geneve.header import (FLAG_OAM, GENEVE_HDR_LEN, GENEVE_PORT, GWLB_ATTACHMENT_ID,
                                   GWLB_ATTACHMENT_ID_LEN, GWLB_CLASS, GWLB_ENDPOINT_ID,
                                   GWLB_ENDPOINT_ID_LEN, GWLB_FLOW_COOKIE, GWLB_FLOW_COOKIE_LEN,
                                   OPT_CRITICAL, OPT_HDR_LEN, PROTO_IPV4, PROTO_IPV6)

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
MAX_VLAN_TAGS = 2

_SEEN_ENI, _SEEN_ATTACH, _SEEN_COOKIE = 1, 2, 4
_SEEN_ALL = _SEEN_ENI | _SEEN_ATTACH | _SEEN_COOKIE


@njit(cache=True, nogil=True, inline="always", _nrt=False)
def _is_vlan(ethertype):
    return ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100


@njit(cache=True, nogil=True, _nrt=False)
def _link(buf, s, c, link):
    """Offset of the network header and its ethertype, or (reason, 0) on failure.

    Returns (offset, ethertype, reason).
    """
    if link == LINKTYPE_ETHERNET:
        if c < 14:
            return 0, 0, Reason.LINK_TRUNCATED
        p = 12
        et = u16(buf, s + p)
        tags = 0
        while _is_vlan(et):
            if tags == MAX_VLAN_TAGS:
                return 0, 0, Reason.TOO_MANY_VLAN_TAGS
            if c < p + 6:
                return 0, 0, Reason.LINK_TRUNCATED
            p += 4
            et = u16(buf, s + p)
            tags += 1
        return p + 2, et, Reason.OK
    if link == LINKTYPE_RAW or link == LINKTYPE_IPV4 or link == LINKTYPE_IPV6:
        if c < 1:
            return 0, 0, Reason.LINK_TRUNCATED
        v = u8(buf, s) >> 4
        return 0, ETH_IPV4 if v == 4 else (ETH_IPV6 if v == 6 else 0), Reason.OK
    if link == LINKTYPE_LINUX_SLL:
        if c < 16:
            return 0, 0, Reason.LINK_TRUNCATED
        return 16, u16(buf, s + 14), Reason.OK
    if link == LINKTYPE_LINUX_SLL2:
        if c < 20:
            return 0, 0, Reason.LINK_TRUNCATED
        return 20, u16(buf, s, True), Reason.OK
    return 0, 0, Reason.LINK_UNSUPPORTED


@njit(cache=True, nogil=True, _nrt=False)
def _outer(buf, s, c, p):
    """Outer IPv4 at p and its UDP header: (reason, UDP offset, UDP length)."""
    if c - p < 20:
        return Reason.OUTER_IP_TRUNCATED, 0, 0
    if u8(buf, s + p) >> 4 != 4:
        return Reason.OUTER_NOT_IPV4, 0, 0
    ihl = np.int64(u8(buf, s + p) & 0x0F) * 4
    tot = np.int64(u16(buf, s + p + 2))
    if ihl < 20 or tot < ihl:
        return Reason.OUTER_IP_BAD_HEADER, 0, 0
    if c - p < ihl:
        return Reason.OUTER_IP_TRUNCATED, 0, 0
    if p + tot > c:
        return Reason.OUTER_IP_BAD_LENGTH, 0, 0
    if ones_sum(buf, s + p, ihl) != 0xFFFF:
        return Reason.OUTER_IP_BAD_CHECKSUM, 0, 0
    if u16(buf, s + p + 6) & 0x3FFF:  # MF or a fragment offset
        return Reason.OUTER_IP_FRAGMENT, 0, 0
    if u8(buf, s + p + 9) != 17:
        return Reason.OUTER_NOT_UDP, 0, 0
    u = p + ihl
    if tot - ihl < 8:
        return Reason.UDP_TRUNCATED, 0, 0
    ulen = np.int64(u16(buf, s + u + 4))
    if ulen < 8 or ulen > tot - ihl:
        return Reason.UDP_BAD_LENGTH, 0, 0
    if u16(buf, s + u + 2) != GENEVE_PORT:
        return Reason.NOT_GENEVE_PORT, 0, 0
    return Reason.OK, u, ulen


@njit(cache=True, nogil=True, _nrt=False)
def _options(buf, s, q, oend):
    """Walk the options in [q, oend): (reason, GWLB options seen, endpoint id,
    attachment id, cookie).

    At most 63 steps: the area is at most 252 bytes and every option takes 4 or more.
    """
    seen = 0
    eni = np.uint64(0)
    attach = np.uint64(0)
    cookie = np.uint32(0)
    while q < oend:
        if oend - q < OPT_HDR_LEN:
            return Reason.GENEVE_OPTION_MALFORMED, seen, eni, attach, cookie
        ocls = u16(buf, s + q)
        otype = u8(buf, s + q + 2)
        olen = np.int64(u8(buf, s + q + 3) & 0x1F) * 4
        d = q + OPT_HDR_LEN
        if oend - d < olen:
            return Reason.GENEVE_OPTION_MALFORMED, seen, eni, attach, cookie
        if ocls == GWLB_CLASS and otype == GWLB_ENDPOINT_ID:
            if olen != GWLB_ENDPOINT_ID_LEN:
                return Reason.GWLB_OPTION_BAD_LENGTH, seen, eni, attach, cookie
            if seen & _SEEN_ENI:
                return Reason.GWLB_OPTION_DUPLICATE, seen, eni, attach, cookie
            seen |= _SEEN_ENI
            eni = u64(buf, s + d)
        elif ocls == GWLB_CLASS and otype == GWLB_ATTACHMENT_ID:
            if olen != GWLB_ATTACHMENT_ID_LEN:
                return Reason.GWLB_OPTION_BAD_LENGTH, seen, eni, attach, cookie
            if seen & _SEEN_ATTACH:
                return Reason.GWLB_OPTION_DUPLICATE, seen, eni, attach, cookie
            seen |= _SEEN_ATTACH
            attach = u64(buf, s + d)
        elif ocls == GWLB_CLASS and otype == GWLB_FLOW_COOKIE:
            if olen != GWLB_FLOW_COOKIE_LEN:
                return Reason.GWLB_OPTION_BAD_LENGTH, seen, eni, attach, cookie
            if seen & _SEEN_COOKIE:
                return Reason.GWLB_OPTION_DUPLICATE, seen, eni, attach, cookie
            seen |= _SEEN_COOKIE
            cookie = u32(buf, s + d)
        elif otype & OPT_CRITICAL:
            return Reason.GENEVE_UNKNOWN_CRITICAL, seen, eni, attach, cookie
        q = d + olen
    return Reason.OK, seen, eni, attach, cookie


@njit(cache=True, nogil=True, _nrt=False)
def _decap(buf, off, caplen, wirelen, link, n, require_gwlb, l3, geneve, inner, inner_len, gproto,
           vni, outer_src, outer_dst, outer_sport, eni, attach, cookie, verdict, reason, counts):
    # Helpers take `buf` and scalars only: every array passed to a per-packet call
    # costs an atomic reference-count update, which once was most of this stage's time.
    for i in range(n):
        s = off[i]
        c = np.int64(caplen[i])
        l3[i] = L3_UNKNOWN
        geneve[i] = 0
        inner[i] = 0
        inner_len[i] = 0
        gproto[i] = 0
        vni[i] = 0
        outer_src[i] = 0
        outer_dst[i] = 0
        outer_sport[i] = 0
        eni[i] = 0
        attach[i] = 0
        cookie[i] = 0
        r = Reason.OK
        if c < np.int64(wirelen[i]):
            r = Reason.CAPTURE_TRUNCATED
        else:
            p, et, r = _link(buf, s, c, link[i])
            if r == Reason.OK:
                if et == ETH_IPV4 or et == ETH_IPV6:
                    l3[i] = p
                r = Reason.OUTER_NOT_IPV4 if et == ETH_IPV6 else (
                    Reason.LINK_NOT_IP if et != ETH_IPV4 else Reason.OK)
            if r == Reason.OK:
                r, u, ulen = _outer(buf, s, c, p)
            if r == Reason.OK:
                outer_src[i] = u32(buf, s + p + 12)
                outer_dst[i] = u32(buf, s + p + 16)
                outer_sport[i] = u16(buf, s + u)
                g = u + 8
                end = u + ulen
                if end - g < GENEVE_HDR_LEN:
                    r = Reason.GENEVE_TRUNCATED
                else:
                    geneve[i] = g
                    optlen = np.int64(u8(buf, s + g) & 0x3F) * 4
                    proto = u16(buf, s + g + 2)
                    vni[i] = u32(buf, s + g + 4) >> 8
                    oend = g + GENEVE_HDR_LEN + optlen
                    if u8(buf, s + g) >> 6 != 0:
                        r = Reason.GENEVE_BAD_VERSION
                    elif u8(buf, s + g + 1) & FLAG_OAM:
                        r = Reason.GENEVE_OAM
                    elif oend > end:
                        r = Reason.GENEVE_OPTIONS_TRUNCATED
                    else:
                        r, seen, eni[i], attach[i], cookie[i] = _options(
                            buf, s, g + GENEVE_HDR_LEN, oend)
                        if r == Reason.OK and proto != PROTO_IPV4 and proto != PROTO_IPV6:
                            r = Reason.GENEVE_BAD_PROTOCOL
                        if r == Reason.OK and require_gwlb and seen != _SEEN_ALL:
                            r = Reason.GWLB_OPTIONS_MISSING
                    if r == Reason.OK:
                        gproto[i] = proto
                        inner[i] = oend
                        inner_len[i] = end - oend
                        if end == oend:
                            r = Reason.INNER_EMPTY
                        else:
                            v = u8(buf, s + oend) >> 4
                            if (proto == PROTO_IPV4 and v != 4) or (proto == PROTO_IPV6 and v != 6):
                                r = Reason.INNER_VERSION_MISMATCH
        if r != Reason.OK:
            verdict[i] = Verdict.DROP
            reason[i] = r
        counts[r] += 1


def decap(b: PacketBatch, counts: np.ndarray, require_gwlb: bool = True) -> None:
    """Fill the outer and GWLB columns of `b`; drop (with a reason) what is not GWLB GENEVE.

    `counts[reason]` is incremented once per packet (reason OK for a good packet).
    `require_gwlb=False` accepts GENEVE without GWLB's three options (other tunnels).
    """
    if counts.shape != (N_REASONS,) or counts.dtype != np.uint64:
        raise ValueError(f"counts must be uint64[{N_REASONS}]")
    _decap(b.buf, b.off, b.caplen, b.wirelen, b.link, b.n, require_gwlb, b.l3, b.geneve, b.inner,
           b.inner_len, b.gproto, b.vni, b.outer_src, b.outer_dst, b.outer_sport, b.gwlb_eni,
           b.gwlb_attach, b.gwlb_cookie, b.verdict, b.reason, counts)
