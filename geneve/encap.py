"""Return path: give a received GENEVE frame back to GWLB as a GWLB target must.

AWS's sample target (gwlbtun) sends the received GENEVE header back with the
inner packet through a raw socket, so that the return keeps GWLB's UDP source port:
outer IPv4 source and destination swapped, UDP ports as received (source = GWLB's
flow-hashed port, destination 6081), GENEVE header and every option byte-identical.
A pass-through packet is rewritten in place: nothing but the outer addresses moves.
"""
from __future__ import annotations

from numba import njit

from egressd.engine.batch import PacketBatch
from egressd.engine.pcapio import LINKTYPE_ETHERNET
from egressd.engine.reasons import Verdict
from egressd.engine.wire import ones_sum


@njit(cache=True, nogil=True, _nrt=False)
def _return_inplace(buf, off, link, l3, verdict, n):
    for i in range(n):
        if verdict[i] != Verdict.PASS:
            continue
        s = off[i]
        if link[i] == LINKTYPE_ETHERNET:
            for k in range(6):
                t = buf[s + k]
                buf[s + k] = buf[s + 6 + k]
                buf[s + 6 + k] = t
        ip = s + l3[i]
        for k in range(4):
            t = buf[ip + 12 + k]
            buf[ip + 12 + k] = buf[ip + 16 + k]
            buf[ip + 16 + k] = t
        # The one's-complement sum is order-independent, so the checksum is unchanged
        # by the swap; recomputing it anyway keeps the header right if a later stage
        # ever edits it.  The UDP checksum stays valid for the same reason: its
        # pseudo-header sums the two addresses, and the ports are kept.
        ihl = (buf[ip] & 0x0F) * 4
        buf[ip + 10] = 0
        buf[ip + 11] = 0
        c = ~ones_sum(buf, ip, ihl) & 0xFFFF
        buf[ip + 10] = c >> 8
        buf[ip + 11] = c & 0xFF


def return_inplace(b: PacketBatch) -> None:
    """Rewrite every PASS packet of `b` (decapsulated by geneve.decap) for its return to GWLB."""
    _return_inplace(b.buf, b.off, b.link, b.l3, b.verdict, b.n)
