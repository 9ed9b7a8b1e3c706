"""Stage 6: the packets egressd creates, in answer to rejected flows and blocked DNS queries.

For every dropped row whose `action` (set by rules.match) asks for it:

- ACT_REJECT on TCP: two resets (RFC 9293 3.10.7, RFC 5961 3.2), one toward the row's
  sender and one toward its receiver, each with the sequence number its endpoint
  accepts at once (see `_rst`);
- ACT_REJECT on anything else: ICMP destination unreachable, communication
  administratively prohibited (type 3 code 13, RFC 1812 5.2.7.1) or ICMPv6 type 1
  code 1 (RFC 4443 3.1), from the row's destination to its sender;
- ACT_DNS_NXDOMAIN / ACT_DNS_NODATA / ACT_DNS_OVERRIDE on a UDP DNS query: the answer
  Route 53 DNS Firewall gives (NXDOMAIN; NOERROR without answers; NOERROR with one CNAME
  to the rule's name and TTL), built from the query.

Each created inner packet is wrapped in a copy of its row's frame up to the end of the
GENEVE options (link layer, outer IPv4, UDP, GENEVE header with GWLB's endpoint id,
attachment id and flow cookie), lengths and checksums fixed, so that geneve.encap's
return path treats it like any returned packet.  Every created inner packet is at most
MAX_CREATED bytes, far below GWLB's 8500-byte inner MTU.

What is never answered, and counted by cause (NOT_CREATED): a reset with a reset
(RFC 9293 3.10.7.1), an ICMP error with an ICMP error, a non-initial fragment, a packet
from or to an address that is not a single host (RFC 1122 3.2.2, RFC 4443 2.4 e), a DNS
query over TCP (see `_act`), a DNS message that is not a standard query (QR set, opcode
other than QUERY), a query that does not parse, and a row whose columns do not describe
its packet (only a batch crafted by hand has those).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressd.engine.batch import (ACT_DNS_NODATA, ACT_DNS_NXDOMAIN, ACT_DNS_OVERRIDE, ACT_NONE,
                                  ACT_REJECT, PacketBatch)
from egressd.engine.dns import HEADER as DNS_HEADER
from egressd.engine.dns import _name
from egressd.engine.parse import (PF_REASSEMBLED, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
                                  _is_icmp_error)
from egressd.engine.pcapio import L3_UNKNOWN
from egressd.engine.reasons import Verdict
from egressd.engine.wire import copy, ones_sum, u8, u16
from egressd.rules.compile import CompiledPolicy

# The largest inner packet created: an ICMPv6 error filled to the IPv6 minimum MTU
# (RFC 4443 2.4 c).  Resets (40/60 bytes), ICMPv4 errors (at most 96) and DNS answers
# (at most 12 + 259-byte question + 267-byte CNAME + 48) are smaller.
MAX_CREATED = 1280
DNS_UDP_MAX = 512        # a DNS answer over UDP without EDNS (RFC 1035 4.2.1)
TTL = 64                 # IPv4 TTL and IPv6 hop limit of created packets (Linux's default)

_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_ACK = 0x01, 0x02, 0x04, 0x10
_RCODE_NXDOMAIN = 3
_TYPE_CNAME, _CLASS_IN = 5, 1

# counters: what was created (the DNS answers in ACT_DNS_* order), then what was not, by cause
CREATED = ("rst_to_client", "rst_to_server", "icmp_unreachable", "dns_nodata", "dns_nxdomain",
           "dns_override")
NOT_CREATED = ("reset_answers_reset", "icmp_error", "fragment", "not_unicast", "dns_over_tcp",
               "dns_not_query", "dns_malformed", "bad_row")
K_RST_CLIENT, K_RST_SERVER, K_ICMP, K_DNS = 0, 1, 2, 3
(N_RST, N_ICMP_ERROR, N_FRAGMENT, N_NOT_UNICAST, N_DNS_TCP, N_DNS_NOT_QUERY, N_DNS_MALFORMED,
 N_BAD_ROW) = range(len(CREATED), len(CREATED) + len(NOT_CREATED))
# what a row makes
_MAKE_RST, _MAKE_ICMP, _MAKE_DNS = 1, 2, 3

# Columns of a created packet that are its row's: the frame prefix (outer headers,
# GENEVE and GWLB options), the inner IP version, the flow it answers, the rule.
_FROM_ROW = ("ts_ns", "link", "l3", "geneve", "inner", "gproto", "vni", "outer_src", "outer_dst",
             "outer_sport", "gwlb_eni", "gwlb_attach", "gwlb_cookie", "ipver", "flow", "flow_id",
             "rule")


@njit(cache=True, nogil=True, inline="always")
def _put16(a, p, v):
    a[p] = (v >> 8) & 0xFF
    a[p + 1] = v & 0xFF


@njit(cache=True, nogil=True, inline="always")
def _put32(a, p, v):
    _put16(a, p, (v >> 16) & 0xFFFF)
    _put16(a, p + 2, v & 0xFFFF)


@njit(cache=True, nogil=True, inline="always")
def _complement(s):
    """The checksum field for a one's-complement sum `s` (any width)."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@njit(cache=True, nogil=True)
def _transport_sum(out, q, v6, proto, t, length):
    """Checksum of the transport message out[t:t+length] of the IP packet at q, over the
    pseudo-header (RFC 9293 3.1, RFC 768, RFC 8200 8.1); its checksum field holds 0."""
    if v6:
        s = np.int64(ones_sum(out, q + 8, 32))
    else:
        s = np.int64(ones_sum(out, q + 12, 8))
    return _complement(s + proto + length + np.int64(ones_sum(out, t, length)))


@njit(cache=True, nogil=True, inline="always")
def _unicast(buf, a, v6):
    """The address at buf[a] can name a single host (RFC 1122 3.2.2, RFC 4443 2.4 e):
    not unspecified, loopback, multicast or (IPv4) class E / limited broadcast."""
    first = u8(buf, a)
    if not v6:
        return first != 0 and first != 127 and first < 224
    if first == 0xFF:
        return False
    for k in range(15):
        if u8(buf, a + k) != 0:
            return True
    return u8(buf, a + 15) > 1   # :: and ::1


@njit(cache=True, nogil=True)
def _ip_header(out, q, buf, src, dst, v6, proto, l4len, ident):
    """A fresh IP header at out[q] from address buf[src] to buf[dst]: IPv4 with DF and
    no options, or IPv6 without extension headers; returns its length."""
    if v6:
        _put32(out, q, 0x60000000)
        _put16(out, q + 4, l4len)
        out[q + 6] = proto
        out[q + 7] = TTL
        copy(out, q + 8, buf, src, 16)
        copy(out, q + 24, buf, dst, 16)
        return 40
    out[q] = 0x45
    out[q + 1] = 0
    _put16(out, q + 2, 20 + l4len)
    _put16(out, q + 4, ident)
    _put16(out, q + 6, 0x4000)  # DF: an answer is never fragmented on its way back
    out[q + 8] = TTL
    out[q + 9] = proto
    out[q + 10] = 0
    out[q + 11] = 0
    copy(out, q + 12, buf, src, 4)
    copy(out, q + 16, buf, dst, 4)
    _put16(out, q + 10, _complement(np.int64(ones_sum(out, q, 20))))
    return 20


@njit(cache=True, nogil=True)
def _rst(out, q, buf, rsrc, rdst, v6, to_sender, sport, dport, seq, ack, flags, plen, ident):
    """A reset at out[q] answering the row (sent rsrc:sport -> rdst:dport with seq, ack,
    flags and plen payload bytes); returns its length.

    Toward the sender, RFC 9293 3.10.7.1's reset for a segment that reached no
    connection: seq = the row's ACK when it has one, else seq 0 with ACK = seq + length
    (SYN and FIN count), which a SYN-SENT sender accepts.  The sender has received what
    it acknowledged, so the row's ACK is its RCV.NXT.

    Toward the receiver, seq = the row's seq, not seq + length: the row is dropped and
    never arrives, so the receiver still expects the row's first byte, and RFC 5961 3.2
    (Linux, Windows, macOS) resets a connection only for a reset whose seq is exactly
    RCV.NXT; any other in-window seq gets a challenge ACK.  ACK set as the row had it.
    """
    if to_sender:
        s, d, sp, dp = rdst, rsrc, dport, sport
        if flags & _TCP_ACK:
            r_seq, r_ack, r_flags = ack, np.int64(0), _TCP_RST
        else:
            length = plen + (flags & _TCP_SYN) // _TCP_SYN + (flags & _TCP_FIN)
            r_seq, r_ack, r_flags = np.int64(0), (seq + length) & 0xFFFFFFFF, _TCP_RST | _TCP_ACK
    else:
        s, d, sp, dp = rsrc, rdst, sport, dport
        if flags & _TCP_ACK:
            r_seq, r_ack, r_flags = seq, ack, _TCP_RST | _TCP_ACK
        else:
            r_seq, r_ack, r_flags = seq, np.int64(0), _TCP_RST
    hl = _ip_header(out, q, buf, s, d, v6, PROTO_TCP, 20, ident)
    t = q + hl
    _put16(out, t, sp)
    _put16(out, t + 2, dp)
    _put32(out, t + 4, r_seq)
    _put32(out, t + 8, r_ack)
    out[t + 12] = 0x50          # 5 words, no options
    out[t + 13] = r_flags
    for k in range(14, 20):     # window, checksum, urgent pointer
        out[t + k] = 0
    _put16(out, t + 16, _transport_sum(out, q, v6, PROTO_TCP, t, 20))
    return hl + 20


@njit(cache=True, nogil=True)
def _icmp(out, q, buf, rip, rlen, rsrc, rdst, v6, ident):
    """Destination unreachable, administratively prohibited, at out[q], from the row's
    destination to its source, quoting the row's packet: its IP header and 8 bytes
    (RFC 792, RFC 1812 4.3.2.3) or as much as fits in 1280 bytes (RFC 4443 2.4 c);
    returns its length."""
    if v6:
        quote = min(rlen, MAX_CREATED - 48)
        proto = PROTO_ICMPV6
    else:
        quote = min(rlen, np.int64(u8(buf, rip) & 0x0F) * 4 + 8)
        proto = PROTO_ICMP
    mlen = 8 + quote
    hl = _ip_header(out, q, buf, rdst, rsrc, v6, proto, mlen, ident)
    t = q + hl
    out[t] = 1 if v6 else 3
    out[t + 1] = 1 if v6 else 13
    for k in range(2, 8):       # checksum, unused
        out[t + k] = 0
    copy(out, t + 8, buf, rip, quote)
    c = _transport_sum(out, q, True, proto, t, mlen) if v6 else _complement(np.int64(ones_sum(out, t, mlen)))
    _put16(out, t + 2, c)
    return hl + mlen


@njit(cache=True, nogil=True)
def _question_end(buf, dp, dn):
    """End of the question of the standard query buf[dp:dp+dn] (past QTYPE and QCLASS),
    or -1 if egressd cannot read it: QDCOUNT other than 1 (RFC 9619), a name
    engine.dns refuses (truncated, too long, bad label) or one with a compression
    pointer (at offset 12 it could only point into the header), QTYPE/QCLASS cut short."""
    if u16(buf, dp + 4) != 1:
        return -1
    # the walk only measures (no copy): `buf` stands in for its output array
    f, end, olen = _name(buf, dp, dn, DNS_HEADER, buf, 0, False)
    # without pointers the wire form is the presentation form plus the first length
    # byte and the root byte (the root name alone: one byte); a pointer makes it shorter
    if f or end - DNS_HEADER != (olen + 2 if olen else 1) or end + 4 > dn:
        return -1
    return end + 4


@njit(cache=True, nogil=True)
def _dns(out, q, buf, rsrc, rdst, v6, sport, dport, dp, qend, act, ov_blob, ovo, ovl, ttl, ident):
    """The DNS Firewall answer to the query buf[dp:] (question ending at qend) at out[q],
    from the query's destination to its source; returns its length.

    Header: the query's id, QR, opcode QUERY (the only one answered), its RD and CD
    (RFC 4035 3.2.2), RA; rcode
    NXDOMAIN or NOERROR; the question as sent; for OVERRIDE one CNAME record (owner: a
    pointer to the question's name) to the rule's name with its TTL.  An answer over
    512 bytes (both names near 255 octets) goes without the record and with TC set, as
    RFC 1035 4.2.1 and RFC 2181 9 ask of a server that cannot fit it."""
    qlen = qend - DNS_HEADER
    ans = 12 + ovl if act == ACT_DNS_OVERRIDE else 0
    tc = 0
    if DNS_HEADER + qlen + ans > DNS_UDP_MAX:
        ans = 0
        tc = 0x0200
    ulen = 8 + DNS_HEADER + qlen + ans
    hl = _ip_header(out, q, buf, rdst, rsrc, v6, PROTO_UDP, ulen, ident)
    u = q + hl
    _put16(out, u, dport)
    _put16(out, u + 2, sport)
    _put16(out, u + 4, ulen)
    _put16(out, u + 6, 0)
    d = u + 8
    hf = np.int64(u16(buf, dp + 2))
    rcode = _RCODE_NXDOMAIN if act == ACT_DNS_NXDOMAIN else 0
    _put16(out, d, u16(buf, dp))
    _put16(out, d + 2, 0x8000 | tc | (hf & 0x0100) | 0x0080 | (hf & 0x0010) | rcode)
    _put16(out, d + 4, 1)
    _put16(out, d + 6, 1 if ans else 0)
    _put32(out, d + 8, 0)       # NSCOUNT, ARCOUNT
    copy(out, d + DNS_HEADER, buf, dp + DNS_HEADER, qlen)
    if ans:
        a = d + DNS_HEADER + qlen
        _put16(out, a, 0xC000 | DNS_HEADER)
        _put16(out, a + 2, _TYPE_CNAME)
        _put16(out, a + 4, _CLASS_IN)
        _put32(out, a + 6, ttl)
        _put16(out, a + 10, ovl)
        copy(out, a + 12, ov_blob, ovo, ovl)
    c = _transport_sum(out, q, v6, PROTO_UDP, u, ulen)
    _put16(out, u + 6, c if c else 0xFFFF)   # 0 means "no checksum" (RFC 768)
    return hl + ulen


@njit(cache=True, nogil=True)
def _fix_outer(out, p, l3, g, length):
    """Lengths and checksums of the outer IPv4 and UDP headers copied to the frame at
    out[p], now carrying an inner packet of `length` bytes after the GENEVE options at
    p + g.  A UDP checksum stays 0 if GWLB sent 0 (RFC 768: none computed)."""
    ipo = p + l3
    ihl = np.int64(u8(out, ipo) & 0x0F) * 4
    tot = g - l3 + length
    _put16(out, ipo + 2, tot)
    _put16(out, ipo + 10, 0)
    _put16(out, ipo + 10, _complement(np.int64(ones_sum(out, ipo, ihl))))
    u = ipo + ihl
    ulen = tot - ihl
    _put16(out, u + 4, ulen)
    if u16(out, u + 6):
        _put16(out, u + 6, 0)
        c = _transport_sum(out, ipo, False, PROTO_UDP, u, ulen)
        _put16(out, u + 6, c if c else 0xFFFF)


@njit(cache=True, nogil=True)
def _row_ok(buf, s, c, l3, g, q, ql, reassembled, v6, t, tn):
    """The row's columns describe bytes in `buf`: its frame [s, s+c) with outer IPv4 at
    l3, its UDP and GENEVE header before the inner packet at g; the inner IP packet
    [q, q+ql), in the frame unless reassembled elsewhere, with a whole IP header; the
    transport part [t, t+tn) inside it."""
    nb = buf.shape[0]
    if s < 0 or c > nb - s or g > c or l3 == L3_UNKNOWN or l3 + 36 > g:
        return False
    ihl = np.int64(u8(buf, s + l3) & 0x0F) * 4
    if ihl < 20 or l3 + ihl + 16 > g:
        return False
    if q < 0 or ql > nb - q or ql < (40 if v6 else 20):
        return False
    if not reassembled and (q < s + g or q + ql > s + c):
        return False
    if not v6 and np.int64(u8(buf, q) & 0x0F) * 4 > ql:
        return False
    return q <= t and t + tn <= q + ql


@njit(cache=True, nogil=True)
def _act(buf, n, action, verdict, off, caplen, l3, inner, ip, ip_len, ipver, proto, l4, payload,
         payload_len, sport, dport, tcp_flags, tcp_seq, tcp_ack, icmp_type, pflags, frag_off, dirs, rule,
         ov_off, ov_len, ov_ttl, ov_blob, ident, out, o_off, o_caplen, o_inner_len, o_ip, o_proto,
         o_dir, o_row, counts):
    """Build the packets the rows ask for into `out` (sized by the caller for 2 packets of
    g + MAX_CREATED bytes per acting row); returns how many were created.

    DNS over TCP gets no answer: the query is part of the client's stream to its
    resolver, so an answer would have to be a segment of the resolver's stream, and the
    resolver's own next segment would reuse its sequence numbers; and the dropped query
    leaves a hole in the client's stream that no answer fills.  The client retries and
    times out, as it does when DNS Firewall drops a query (its DROP action).
    """
    k = 0
    p = 0
    for i in range(n):
        a = action[i]
        if a == ACT_NONE or verdict[i] != Verdict.DROP:
            continue
        s = off[i]
        g = np.int64(inner[i])
        q = ip[i]
        ql = np.int64(ip_len[i])
        v6 = ipver[i] == 6
        pr = proto[i]
        rsrc = q + (8 if v6 else 12)
        rdst = q + (24 if v6 else 16)
        t, tn = q, np.int64(0)
        if pr == PROTO_TCP:
            t, tn = l4[i], np.int64(20)
        elif a != ACT_REJECT:
            t, tn = payload[i], np.int64(payload_len[i])
        why = -1
        make = 0
        qend = 0
        if frag_off[i]:  # no transport header to answer, and RFC 1122 3.2.2 for ICMP
            why = N_FRAGMENT
        elif ((ipver[i] != 4 and not v6)
                or not _row_ok(buf, s, np.int64(caplen[i]), np.int64(l3[i]), g, q, ql,
                               (pflags[i] & PF_REASSEMBLED) != 0, v6, t, tn)):
            why = N_BAD_ROW
        elif not _unicast(buf, rsrc, v6) or not _unicast(buf, rdst, v6):
            why = N_NOT_UNICAST
        elif a == ACT_REJECT:
            if pr == PROTO_TCP:
                if tcp_flags[i] & _TCP_RST:
                    why = N_RST
                else:
                    make = _MAKE_RST
            elif (pr == PROTO_ICMP or pr == PROTO_ICMPV6) and _is_icmp_error(pr, icmp_type[i]):
                why = N_ICMP_ERROR
            else:
                make = _MAKE_ICMP
        elif pr == PROTO_TCP:
            why = N_DNS_TCP
        elif pr != PROTO_UDP or tn < DNS_HEADER:
            why = N_DNS_MALFORMED
        elif u16(buf, t + 2) & 0xF800:  # QR set, or an opcode other than QUERY
            why = N_DNS_NOT_QUERY
        else:
            qend = _question_end(buf, t, tn)
            r = rule[i]
            if qend < 0:
                why = N_DNS_MALFORMED
            elif a == ACT_DNS_OVERRIDE and (r < 0 or r >= ov_len.shape[0] or ov_len[r] <= 0
                                            or ov_off[r] < 0 or ov_len[r] > ov_blob.shape[0] - ov_off[r]):
                why = N_BAD_ROW
            else:
                make = _MAKE_DNS
        if why >= 0:
            counts[why] += 1
            continue
        d = dirs[i]
        for j in range(2 if make == _MAKE_RST else 1):
            copy(out, p, buf, s, g)
            h = p + g
            if not v6:
                ident[0] = (ident[0] + 1) & 0xFFFF
            if make == _MAKE_RST:
                # j 0: toward the row's sender; 1: toward its receiver
                length = _rst(out, h, buf, rsrc, rdst, v6, j == 0, np.int64(sport[i]), np.int64(dport[i]),
                              np.int64(tcp_seq[i]), np.int64(tcp_ack[i]), np.int64(tcp_flags[i]),
                              np.int64(payload_len[i]), ident[0])
                counts[K_RST_CLIENT if (j == 0) == (d == 0) else K_RST_SERVER] += 1
                o_proto[k] = PROTO_TCP
                o_dir[k] = 1 - d if j == 0 else d
            elif make == _MAKE_ICMP:
                length = _icmp(out, h, buf, q, ql, rsrc, rdst, v6, ident[0])
                counts[K_ICMP] += 1
                o_proto[k] = PROTO_ICMPV6 if v6 else PROTO_ICMP
                o_dir[k] = 1 - d
            else:
                r = rule[i]
                ovo = ov_off[r] if a == ACT_DNS_OVERRIDE else 0
                ovl = ov_len[r] if a == ACT_DNS_OVERRIDE else 0
                ttl = ov_ttl[r] & 0xFFFFFFFF if a == ACT_DNS_OVERRIDE else 0
                length = _dns(out, h, buf, rsrc, rdst, v6, np.int64(sport[i]), np.int64(dport[i]), t, qend,
                              a, ov_blob, ovo, ovl, ttl, ident[0])
                counts[K_DNS + a - ACT_DNS_NODATA] += 1
                o_proto[k] = PROTO_UDP
                o_dir[k] = 1 - d
            _fix_outer(out, p, np.int64(l3[i]), g, length)
            o_off[k] = p
            o_caplen[k] = g + length
            o_inner_len[k] = length
            o_ip[k] = h
            o_row[k] = i
            p += g + length
            k += 1
    return k


class Actions:
    """Builds the packets that answer rejected flows and blocked DNS queries."""

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        t = policy.tables
        self._ov = (np.ascontiguousarray(t.ov_off, np.int64), np.ascontiguousarray(t.ov_len, np.int64),
                    np.ascontiguousarray(t.ov_ttl, np.int64), np.ascontiguousarray(t.ov_blob, np.uint8))
        self._ident = np.zeros(1, np.int64)   # IPv4 identification of the last packet created
        self._counts = np.zeros(len(CREATED) + len(NOT_CREATED), np.uint64)

    def run(self, b: PacketBatch) -> PacketBatch | None:
        """The packets created for batch `b` (a batch of ready-to-return frames), or None."""
        n = b.n
        acting = (b.action[:n] != ACT_NONE) & (b.verdict[:n] == Verdict.DROP)
        rows = int(np.count_nonzero(acting))
        if not rows:
            return None
        # one allocation per batch: room for two packets of the largest size per row
        room = 2 * (int(b.inner[:n][acting].sum(dtype=np.int64)) + rows * MAX_CREATED)
        c = PacketBatch(2 * rows, np.empty(room, np.uint8))
        row = np.empty(2 * rows, np.int64)
        k = _act(b.buf, n, b.action, b.verdict, b.off, b.caplen, b.l3, b.inner, b.ip, b.ip_len, b.ipver,
                 b.proto, b.l4, b.payload, b.payload_len, b.sport, b.dport, b.tcp_flags, b.tcp_seq,
                 b.tcp_ack, b.icmp_type, b.pflags, b.frag_off, b.dir, b.rule, *self._ov, self._ident, c.buf,
                 c.off, c.caplen, c.inner_len, c.ip, c.proto, c.dir, row, self._counts)
        if not k:
            return None
        c.n = k
        row = row[:k]
        for name in _FROM_ROW:
            getattr(c, name)[:k] = getattr(b, name)[row]
        c.wirelen[:k] = c.caplen[:k]
        c.ip_len[:k] = c.inner_len[:k]
        c.alert[:k] = -1
        c.name_id[:k] = -1
        c.verdict[:k] = Verdict.PASS
        return c

    def counters(self) -> dict[str, int | dict[str, int]]:
        """Packets created by kind, and rows that asked for one but got none, by cause."""
        out: dict[str, int | dict[str, int]] = {
            name: int(v) for name, v in zip(CREATED, self._counts[:len(CREATED)])}
        out["not_created"] = {name: int(v) for name, v in zip(NOT_CREATED, self._counts[len(CREATED):])}
        return out
