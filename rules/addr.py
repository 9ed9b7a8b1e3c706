"""Address and port sets as sorted, disjoint, inclusive ranges.

Addresses are 128-bit integers with IPv4 mapped into ::ffff:0:0/96, the form the
packet batch holds, so `10.0.0.0/8` and `2001:db8::/32` live in one table.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from egressd.rules.policy import Ranges

ADDR_MAX = (1 << 128) - 1
PORT_MAX = 65535
V4_BASE = 0xFFFF << 32
ANY_ADDR: Ranges = ((0, ADDR_MAX),)
ANY_PORT: Ranges = ((0, PORT_MAX),)


def cidr(text: str) -> tuple[int, int]:
    """(first, last) of an IPv4 or IPv6 CIDR (or a bare address), mapped.  Raises
    ValueError with the reason; host bits set are an error, as AWS refuses them."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a CIDR block ({e})") from None
    lo, hi = int(net.network_address), int(net.broadcast_address)
    if net.version == 4:
        lo, hi = lo + V4_BASE, hi + V4_BASE
    return lo, hi


V4_MAPPED: Ranges = ((V4_BASE, V4_BASE + 0xFFFFFFFF),)


def cidr_set(text: str) -> Ranges:
    """The addresses of a CIDR as a rule means them: an IPv6 block never covers IPv4
    (AWS rules and Suricata match each family apart; `::/0` is every IPv6 address),
    though the mapped form puts IPv4 inside ::ffff:0:0/96."""
    lo, hi = cidr(text)
    if ":" in text:
        return subtract(((lo, hi),), V4_MAPPED, ADDR_MAX)
    return ((lo, hi),)


def normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sorted, merged (touching ranges join)."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def complement(ranges: Ranges, top: int) -> Ranges:
    out = []
    nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= top:
        out.append((nxt, top))
    return tuple(out)


def subtract(a: Ranges, b: Ranges, top: int) -> Ranges:
    return intersect(a, complement(b, top))


def intersect(a: Ranges, b: Ranges) -> Ranges:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def cidrs(texts: Iterable[str]) -> Ranges:
    return normalize(r for t in texts for r in cidr_set(t))


def port_range(text: str | int) -> tuple[int, int]:
    """`443`, `1024-65535` or `1024:65535` (Suricata, AWS) -> (lo, hi)."""
    s = str(text).strip()
    for sep in ("-", ":"):
        if sep in s:
            a, b = s.split(sep, 1)
            lo = int(a) if a.strip() else 0
            hi = int(b) if b.strip() else PORT_MAX
            break
    else:
        try:
            lo = hi = int(s)
        except ValueError:
            raise ValueError(f"{text!r} is not a port or port range") from None
    if not 0 <= lo <= hi <= PORT_MAX:
        raise ValueError(f"{text!r} is not a port range within 0-65535")
    return lo, hi


def contains(ranges: Ranges, value: int) -> bool:
    return any(lo <= value <= hi for lo, hi in ranges)


def address(text: str) -> int:
    """One address (IPv4 mapped) as a 128-bit integer."""
    a = ipaddress.ip_address(text)
    return int(a) + V4_BASE if a.version == 4 else int(a)
