"""Host settings a GWLB target needs: interface MTU and socket-buffer sysctls.

`egressd serve --setup-interface IFACE` calls `setup_interface`; deploy/README.md
and deploy/sysctl.d/90-egressd.conf carry the same numbers, and
tests/test_deploy.py holds them to `HOST_SETTINGS` and `GWLB_TARGET_MTU`.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from egressd.cli import BadInput
from egressd.geneve.header import GWLB_OVERHEAD

# EC2's jumbo-frame MTU: GWLB carries client packets of up to 8,500 bytes, so its
# GENEVE packets reach 8,500 + 68 bytes, more than a 1,500-byte interface takes.
GWLB_TARGET_MTU = 9001
# Below this a full-size (1,500-byte) client packet no longer fits once GWLB has
# wrapped it; above it no EC2 network carries the frame.
MTU_RANGE = (1500 + GWLB_OVERHEAD, GWLB_TARGET_MTU)

# Minimums: setup_interface raises a value below these and never lowers one.
HOST_SETTINGS: dict[str, int] = {
    # Ceiling on SO_RCVBUF.  egressd asks for 64 MiB per worker socket
    # (engine/sockio.py): with CAP_NET_ADMIN it forces that past this ceiling, but
    # without it the kernel silently caps the request here (208 KiB by default).
    # 128 MiB is what AWS's sample GWLB target (gwlbtun) asks for.
    "net.core.rmem_max": 128 * 1024 * 1024,
    # Ceiling on SO_SNDBUF for the raw return socket, which sends a whole batch of
    # returned packets at once: the same headroom as the receive side.
    "net.core.wmem_max": 128 * 1024 * 1024,
    # Receive buffer of a socket that does not ask for one: the safety net if a
    # buffer request is refused, and what other receivers on the appliance get.
    # 16 MiB holds up to 13 ms of 10 Gbit/s (less after the kernel's per-packet
    # accounting); the default 208 KiB fills in 0.2 ms.
    "net.core.rmem_default": 16 * 1024 * 1024,
    # Per-CPU queue (packets) between the driver's poll and the IP stack, used when
    # RPS spreads one NIC queue over CPUs: 1,000 by default drops bursts;
    # 30,000 is 3 ms at 10 Mpps.
    "net.core.netdev_max_backlog": 30000,
}


def _sysctl_path(proc_root: Path, key: str) -> Path:
    return proc_root.joinpath(*key.split("."))


def _read_sysctl(proc_root: Path, key: str) -> int:
    path = _sysctl_path(proc_root, key)
    try:
        return int(path.read_text().split()[0])
    except FileNotFoundError:
        raise BadInput(f"sysctl {key}: {path} does not exist (a network namespace "
                       "other than the host's does not have it)") from None
    except (OSError, ValueError, IndexError) as e:
        raise BadInput(f"sysctl {key}: cannot read {path}: {e}") from None


def _link_mtu(ipr: IPRoute, index: int) -> int:
    return ipr.link("get", index=index)[0].get_attr("IFLA_MTU")


def setup_interface(iface: str, mtu: int = GWLB_TARGET_MTU,
                    proc_root: str | Path = "/proc/sys") -> dict[str, dict[str, int]]:
    """Set `iface`'s MTU and bring it up, then raise the HOST_SETTINGS sysctls.

    Returns {"mtu": {"old", "new"}, "<sysctl>": {"old", "new"}, ...}.  Everything is
    checked before anything changes, so a BadInput leaves the host as it was.
    `proc_root` is where the sysctls live (tests point it at a scratch folder).
    """
    if not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
        raise BadInput(f"--setup-interface {iface}: MTU {mtu} out of range "
                       f"{MTU_RANGE[0]}-{MTU_RANGE[1]} for a GWLB target")
    root = Path(proc_root)
    old = {key: _read_sysctl(root, key) for key in HOST_SETTINGS}
    new = {key: max(old[key], want) for key, want in HOST_SETTINGS.items()}
    for key in HOST_SETTINGS:
        path = _sysctl_path(root, key)
        # effective ids: a service holding CAP_NET_ADMIN may write net.* sysctls
        # without being root, which a real-uid access() check would deny
        if new[key] != old[key] and not os.access(path, os.W_OK, effective_ids=True):
            raise BadInput(f"sysctl {key}: {path} is not writable here (needs root or "
                           "CAP_NET_ADMIN in the host's network namespace)")
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            raise BadInput(f"--setup-interface {iface}: no such interface")
        index = found[0]
        old_mtu = _link_mtu(ipr, index)
        try:
            ipr.link("set", index=index, mtu=mtu, state="up")
        except NetlinkError as e:
            if e.code == errno.EPERM:
                raise BadInput(f"--setup-interface {iface}: setting the MTU needs root "
                               "or CAP_NET_ADMIN") from None
            raise BadInput(f"--setup-interface {iface}: the kernel refused MTU {mtu}: "
                           f"{os.strerror(e.code)}") from None
        new_mtu = _link_mtu(ipr, index)
    for key, value in new.items():
        if value != old[key]:
            _sysctl_path(root, key).write_text(f"{value}\n")
    report = {"mtu": {"old": old_mtu, "new": new_mtu}}
    report.update({key: {"old": old[key], "new": new[key]} for key in HOST_SETTINGS})
    return report
