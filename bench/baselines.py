"""What egressd is measured against: the same work written with dpkt (and scapy).

`dpkt_pipeline` and `scapy_pipeline` (bottom) do the whole pipeline's work under a domain
allowlist, one packet object at a time; `egressd bench` (bench/harness.py) runs them.
`dpkt_passthrough` does, one packet object at a time, the work of
`egressd.engine.pipeline.replay` with the allow-all decision: read the pcap, parse
Ethernet / IPv4 / UDP, check the outer header as egressd's decap does (length,
header checksum, fragments, UDP length, port 6081), parse the GENEVE header and walk
its options for GWLB's endpoint id, attachment id and flow cookie, then return the
packet (outer MACs and IPv4 addresses swapped, IPv4 header checksum recomputed,
everything else byte-identical) to a nanosecond pcap.  The one check it leaves out
is egressd's captured-length-below-wire-length drop: dpkt's reader does not give
the wire length (such frames fail the IPv4 length check here instead).
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import NamedTuple

import dpkt

from egressd.bench.policy import python_allowed

GENEVE_PORT = 6081
GWLB_CLASS = 0x0108
GWLB_OPTION_LEN = {1: 8, 2: 8, 3: 4}  # endpoint id, attachment id, flow cookie
OPT_CRITICAL = 0x80
INNER_VERSION = {0x0800: 4, 0x86DD: 6}


def gwlb_options(geneve: bytes) -> tuple[int, int, int] | None:
    """(endpoint id, attachment id, cookie) of a GENEVE header + payload, or None.

    None for what egressd drops: bad version, OAM, options past the payload or past
    the option length, an unknown critical option, a GWLB option of the wrong length
    or twice, one of the three missing, a protocol other than IPv4/IPv6, or an inner
    packet that is empty or of the other IP version.
    """
    if len(geneve) < 8:
        return None
    ver_optlen, flags, proto = struct.unpack_from("!BBH", geneve)
    optlen = (ver_optlen & 0x3F) * 4
    if ver_optlen >> 6 or flags & 0x80 or len(geneve) - 8 < optlen:
        return None
    found: dict[int, int] = {}
    q, end = 8, 8 + optlen
    while q < end:
        if end - q < 4:
            return None
        cls, otype, olen = struct.unpack_from("!HBB", geneve, q)
        olen = (olen & 0x1F) * 4
        q += 4
        if end - q < olen:
            return None
        if cls == GWLB_CLASS and otype in GWLB_OPTION_LEN:
            if olen != GWLB_OPTION_LEN[otype] or otype in found:
                return None
            found[otype] = int.from_bytes(geneve[q:q + olen], "big")
        elif otype & OPT_CRITICAL:
            return None
        q += olen
    if proto not in INNER_VERSION or len(found) != 3 or end == len(geneve):
        return None
    if geneve[end] >> 4 != INNER_VERSION[proto]:
        return None
    return found[1], found[2], found[3]


def _outer(frame: bytes) -> tuple[dpkt.ethernet.Ethernet, int] | None:
    """The frame parsed and where its outer IPv4 header starts, or None if egressd's
    decap would drop it."""
    try:
        eth = dpkt.ethernet.Ethernet(frame)
    except dpkt.UnpackError:
        return None
    ip = eth.data
    if not isinstance(ip, dpkt.ip.IP):  # includes a third VLAN tag, which dpkt leaves raw
        return None
    hl = ip.hl * 4
    at = 14 + 4 * len(getattr(eth, "vlan_tags", ()))
    if ip.v != 4 or hl < 20 or ip.len < hl or at + ip.len > len(frame):
        return None
    if dpkt.in_cksum(frame[at:at + hl]) != 0 or ip.mf or ip.offset:
        return None
    udp = ip.data
    if not isinstance(udp, dpkt.udp.UDP) or not 8 <= udp.ulen <= ip.len - hl:
        return None
    if udp.dport != GENEVE_PORT or gwlb_options(udp.data[:udp.ulen - 8]) is None:
        return None
    return eth, at


def _swapped(eth: dpkt.ethernet.Ethernet, at: int, frame: bytes) -> bytes:
    """The frame as a GWLB target returns it: outer MACs and IPv4 addresses swapped."""
    ip = eth.data
    eth.src, eth.dst = eth.dst, eth.src
    ip.src, ip.dst = ip.dst, ip.src
    ip.sum = 0
    ip.sum = dpkt.in_cksum(ip.pack_hdr() + bytes(ip.opts))
    # Packed piece by piece: bytes(ip) would also fill in a zero UDP checksum.
    return eth.pack_hdr() + ip.pack_hdr() + bytes(ip.opts) + frame[at + ip.hl * 4:]


def _returned(frame: bytes) -> bytes | None:
    """The frame as a GWLB target returns it, or None if egressd would drop it."""
    parsed = _outer(frame)
    return None if parsed is None else _swapped(*parsed, frame)


class Passed(NamedTuple):
    packets_in: int
    bytes_in: int      # captured frame bytes read
    packets_out: int


def _dpkt_replay(inp: str | os.PathLike, out: str | os.PathLike, limit: int | None,
                 returned: Callable[[bytes], bytes | None]) -> Passed:
    """Read pcap `inp` with dpkt (at most `limit` packets) and write to pcap `out` what
    `returned(frame)` gives back (None: dropped)."""
    read = nbytes = written = 0
    with open(inp, "rb") as fi, open(out, "wb") as fo:
        writer = dpkt.pcap.Writer(fo, snaplen=262144, nano=True)
        for ts, frame in dpkt.pcap.Reader(fi):
            if limit is not None and read >= limit:
                break
            read += 1
            nbytes += len(frame)
            back = returned(frame)
            if back is not None:
                writer.writepkt(back, ts)
                written += 1
    return Passed(read, nbytes, written)


def dpkt_passthrough(inp: str | os.PathLike, out: str | os.PathLike,
                     limit: int | None = None) -> Passed:
    """Return the GWLB packets of pcap `inp` into pcap `out`, reading at most `limit`."""
    return _dpkt_replay(inp, out, limit, _returned)


def copy_floor(inp: str | os.PathLike, out: str | os.PathLike, chunk_bytes: int = 16 << 20) -> int:
    """Copy `inp` to `out` as egressd's reader and writer move bytes; return bytes copied.

    No packet is looked at: this is the file-to-file floor on the machine (read in
    16 MiB chunks into one buffer, written to `OUT.part`, renamed), which a
    pass-through replay cannot beat.
    """
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    part = f"{os.fspath(out)}.part"
    total = 0
    with open(inp, "rb", buffering=0) as fi, open(part, "wb") as fo:
        while got := fi.readinto(buf):
            fo.write(view[:got])
            total += got
    os.replace(part, out)
    return total


# --- the whole pipeline, in Python: what egressd is measured against in `egressd bench` -----

PASS, DROP, PENDING = 1, 2, 0
HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"CONNECT ",
                b"PATCH ", b"TRACE ")
MAX_CLIENT_MESSAGE = 1 << 16      # a ClientHello or request head longer than this is not waited for


def client_hello_sni(data: bytes) -> tuple[bool, bytes | None]:
    """(complete, server name) of a TLS client stream's first bytes: complete once the
    records hold the whole ClientHello handshake message (it may span records)."""
    hs = b""
    p = 0
    while p + 5 <= len(data) and data[p] == 22:
        size = int.from_bytes(data[p + 3:p + 5], "big")
        hs += data[p + 5:p + 5 + size]
        p += 5 + size
        if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
            break
    if len(hs) < 4 or len(hs) < 4 + int.from_bytes(hs[1:4], "big"):
        return False, None
    hello = hs[4:4 + int.from_bytes(hs[1:4], "big")]
    if hs[0] != 1:
        return True, None
    q = 2 + 32                                               # version, random
    q += 1 + hello[q] if q < len(hello) else 0               # session id
    q += 2 + int.from_bytes(hello[q:q + 2], "big")           # cipher suites
    q += 1 + hello[q] if q < len(hello) else 0               # compression methods
    end = min(len(hello), q + 2 + int.from_bytes(hello[q:q + 2], "big"))
    q += 2
    while q + 4 <= end:
        etype, size = int.from_bytes(hello[q:q + 2], "big"), int.from_bytes(hello[q + 2:q + 4], "big")
        q += 4
        if etype == 0:       # server_name: list length, then (type, length, name)s
            ext = hello[q:q + size]
            r = 2
            while r + 3 <= len(ext):
                kind, n = ext[r], int.from_bytes(ext[r + 1:r + 3], "big")
                if kind == 0:
                    return True, ext[r + 3:r + 3 + n]
                r += 3 + n
            return True, None
        q += size
    return True, None


def http_host(data: bytes) -> tuple[bool, bytes | None]:
    """(complete, Host without its port) of an HTTP request head."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return False, None
    for line in data[:head_end].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"host":
            host = value.strip()
            return True, host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host
    return True, None


class FlowJudge:
    """The decisions of a Python pipeline under the allowlist: flows in a dict keyed by
    5-tuple; a TCP flow's client stream is kept until its ClientHello or request head is
    whole, whose name (TLS SNI, HTTP Host) is looked up in sets; a denied flow is dropped
    from that packet on, both ways.  What AWS's generated rules decide (and egressd):
    other flows, QUIC and DNS included, pass.  DNS query names are read too (`names`),
    as egressd reads them."""

    def __init__(self, exact: set[bytes], wild: set[bytes]) -> None:
        self.exact, self.wild = exact, wild
        self.flows: dict[tuple, list] = {}       # key -> [client endpoint, verdict, stream]
        self.names = 0

    def forward(self, proto: int, src: bytes, sport: int, dst: bytes, dport: int,
                payload: bytes) -> bool:
        a, b = (src, sport), (dst, dport)
        key = (proto, a, b) if a <= b else (proto, b, a)
        flow = self.flows.get(key)
        if flow is None:
            flow = self.flows[key] = [a, PENDING, b""]
        if flow[1] == PENDING and payload and flow[0] == a:
            if proto == 6:
                self._client_data(flow, payload)
            elif proto == 17 and dport == 53:
                self._dns(payload)
        return flow[1] != DROP

    def _client_data(self, flow: list, payload: bytes) -> None:
        data = flow[2] + payload
        if data[0] == 22:
            done, name = client_hello_sni(data)
        elif data.startswith(HTTP_METHODS):
            done, name = http_host(data)
        else:
            flow[1], flow[2] = PASS, b""
            return
        if done or len(data) > MAX_CLIENT_MESSAGE:
            self.names += name is not None
            allowed = name is not None and python_allowed(name.lower().rstrip(b"."), self.exact, self.wild)
            flow[1], flow[2] = (PASS if allowed else DROP), b""
        else:
            flow[2] = data

    def _dns(self, payload: bytes) -> None:
        try:
            msg = dpkt.dns.DNS(payload)
        except (dpkt.UnpackError, IndexError):
            return
        self.names += len(msg.qd)


def dpkt_pipeline(inp: str | os.PathLike, out: str | os.PathLike, judge: FlowJudge,
                  limit: int | None = None) -> Passed:
    """egressd's work with dpkt, one packet object at a time: outer checks and GWLB
    options (as dpkt_passthrough), the inner IPv4/IPv6 and TCP/UDP parsed, `judge`
    decides, the packets it forwards are returned to pcap `out`."""

    def returned(frame: bytes) -> bytes | None:
        parsed = _outer(frame)
        if parsed is None:
            return None
        eth, at = parsed
        udp = eth.data.data
        geneve = udp.data[:udp.ulen - 8]
        inner = geneve[8 + (geneve[0] & 0x3F) * 4:]
        try:
            ip = dpkt.ip.IP(inner) if inner[0] >> 4 == 4 else dpkt.ip6.IP6(inner)
        except dpkt.UnpackError:
            return None
        l4 = ip.data
        ports = (l4.sport, l4.dport) if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)) else (0, 0)
        payload = bytes(l4.data) if ports != (0, 0) else b""
        if judge.forward(ip.p if ip.v == 4 else ip.nxt, ip.src, ports[0], ip.dst, ports[1], payload):
            return _swapped(eth, at, frame)
        return None

    return _dpkt_replay(inp, out, limit, returned)


def scapy_pipeline(inp: str | os.PathLike, out: str | os.PathLike, judge: FlowJudge,
                   limit: int) -> Passed:
    """The same with scapy (its GENEVE layer), on the first `limit` packets."""
    from scapy.contrib.geneve import GENEVE
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapReader, PcapWriter

    read = nbytes = written = 0
    with PcapReader(os.fspath(inp)) as reader, PcapWriter(os.fspath(out), nano=True, sync=False) as writer:
        for pkt in reader:
            if read >= limit:
                break
            read += 1
            nbytes += len(pkt)
            if Ether not in pkt or IP not in pkt or GENEVE not in pkt:
                continue
            outer, udp, gen = pkt[IP], pkt[UDP], pkt[GENEVE]
            if (outer.flags.MF or outer.frag or udp.dport != GENEVE_PORT
                    or gwlb_options(bytes(gen)) is None):
                continue
            inner = gen.payload
            if not isinstance(inner, (IP, IPv6)):
                continue
            l4 = inner.payload
            has_ports = isinstance(l4, (TCP, UDP))
            proto = inner.proto if isinstance(inner, IP) else inner.nh
            if judge.forward(proto, inner.src.encode(), l4.sport if has_ports else 0,
                             inner.dst.encode(), l4.dport if has_ports else 0,
                             bytes(l4.payload) if has_ports else b""):
                pkt[Ether].src, pkt[Ether].dst = pkt[Ether].dst, pkt[Ether].src
                outer.src, outer.dst = outer.dst, outer.src
                del outer.chksum
                writer.write(pkt)
                written += 1
    return Passed(read, nbytes, written)
