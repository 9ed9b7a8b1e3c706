"""Two network namespaces joined by a veth pair, as GWLB and its target see each other:
`gwlb` (the simulator) and `appliance` (egressd serve), for the serve tests and
benchmark.  Built with pyroute2; names carry a unique suffix and everything is
removed on exit, even after a failure.
"""
from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from pyroute2 import IPRoute, netns

T = TypeVar("T")
GWLB_ADDR, APPLIANCE_ADDR, PREFIX = "10.201.0.1", "10.201.0.2", 24
MTU = 9001


@dataclass(frozen=True)
class Pair:
    gwlb: str          # namespace names
    appliance: str

    def exec(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start `argv` inside namespace `ns`."""
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)

    def call(self, ns: str, fn: Callable[[], T]) -> T:
        """fn() with this thread in namespace `ns` (sockets it opens stay there)."""
        netns.pushns(ns)
        try:
            return fn()
        finally:
            netns.popns()


@contextmanager
def veth_pair(mtu: int = MTU) -> Iterator[Pair]:
    """Namespaces gwlb-<id> (GWLB_ADDR) and appliance-<id> (APPLIANCE_ADDR), a veth
    pair of `mtu` between them, loopback up in both."""
    tag = uuid.uuid4().hex[:8]
    pair = Pair(f"gwlb-{tag}", f"appliance-{tag}")
    ends = (f"eg{tag}g", f"eg{tag}a")
    made: list[str] = []
    try:
        for ns in (pair.gwlb, pair.appliance):
            netns.create(ns)
            made.append(ns)
        with IPRoute() as ip:
            ip.link("add", ifname=ends[0], kind="veth", peer=ends[1])
            for end, ns in zip(ends, (pair.gwlb, pair.appliance)):
                ip.link("set", index=ip.link_lookup(ifname=end)[0], net_ns_fd=ns)
        for end, ns, addr in zip(ends, (pair.gwlb, pair.appliance), (GWLB_ADDR, APPLIANCE_ADDR)):
            with IPRoute(netns=ns) as ip:
                idx = ip.link_lookup(ifname=end)[0]
                ip.link("set", index=idx, mtu=mtu)
                ip.addr("add", index=idx, address=addr, prefixlen=PREFIX)
                ip.link("set", index=idx, state="up")
                ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
        yield pair
    finally:
        for ns in made:
            netns.remove(ns)    # the veth ends go with their namespaces
        with IPRoute() as ip:   # unless a failure left one behind in ours
            for end in ends:
                for idx in ip.link_lookup(ifname=end):
                    ip.link("del", index=idx)
