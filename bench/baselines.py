"""What egressd is measured against: the same pass-through written with dpkt.

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
from typing import NamedTuple

import dpkt

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


def _returned(frame: bytes) -> bytes | None:
    """The frame as a GWLB target returns it, or None if egressd would drop it."""
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
    eth.src, eth.dst = eth.dst, eth.src
    ip.src, ip.dst = ip.dst, ip.src
    ip.sum = 0
    ip.sum = dpkt.in_cksum(ip.pack_hdr() + bytes(ip.opts))
    # Packed piece by piece: bytes(ip) would also fill in a zero UDP checksum.
    return eth.pack_hdr() + ip.pack_hdr() + bytes(ip.opts) + frame[at + hl:]


class Passed(NamedTuple):
    packets_in: int
    bytes_in: int      # captured frame bytes read
    packets_out: int


def dpkt_passthrough(inp: str | os.PathLike, out: str | os.PathLike,
                     limit: int | None = None) -> Passed:
    """Return the GWLB packets of pcap `inp` into pcap `out`, reading at most `limit`."""
    read = nbytes = written = 0
    with open(inp, "rb") as fi, open(out, "wb") as fo:
        writer = dpkt.pcap.Writer(fo, snaplen=262144, nano=True)
        for ts, frame in dpkt.pcap.Reader(fi):
            if limit is not None and read >= limit:
                break
            read += 1
            nbytes += len(frame)
            returned = _returned(frame)
            if returned is not None:
                writer.writepkt(returned, ts)
                written += 1
    return Passed(read, nbytes, written)


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
