"""Batched socket I/O for `egressd serve` and the GWLB simulator: recvmmsg / sendmmsg.

One libc call moves a whole batch (ctypes releases the GIL for it); the message
vectors (mmsghdr, iovec, sockaddr_in, control) are numpy arrays allocated once, and
numba kernels fill and read them, so no Python runs per packet.

Receive.  A UDP socket delivers the GENEVE datagram without its outer IPv4 and UDP
headers.  Each datagram is received 28 bytes into its slot of a PacketBatch buffer and
`_frame` writes an outer IPv4 + UDP header in front of it -- source the sender (from
msg_name), destination the local address (IP_PKTINFO), UDP ports as received -- so
the frame is a LINKTYPE_RAW packet that geneve.decap and the return path treat like
a captured one.  What the kernel did not keep (TTL, identification, TOS) is made up:
TTL 64, DF, identification 0; the UDP checksum is 0 (allowed over IPv4, RFC 768; the
kernel verified the datagram's own).  A datagram larger than its slot (MSG_TRUNC) is
kept with its true length as the wire length, so decap drops it as capture_truncated.

Send.  Returns leave through one raw IPv4 socket (IPPROTO_RAW, the header given), as
AWS's sample target does: only that keeps GWLB's UDP source port and the GENEVE
header as received.  Each message is the frame's IP packet; msg_name is its
destination, which the kernel routes by.

Layout (x86-64 / aarch64 Linux, LP64): mmsghdr is 64 bytes, used here as 8 words:
0 msg_name, 1 msg_namelen, 2 msg_iov, 3 msg_iovlen, 4 msg_control, 5 msg_controllen,
6 msg_flags, 7 msg_len (32-bit fields in the low half of their little-endian word).
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
import time

import numpy as np
from numba import njit

from egressd.engine.batch import PacketBatch
from egressd.engine.pcapio import LINKTYPE_RAW
from egressd.engine.reasons import Verdict
from egressd.engine.wire import ones_sum, u8
from egressd.geneve.header import GENEVE_PORT

if sys.platform != "linux" or ctypes.sizeof(ctypes.c_void_p) != 8 or sys.byteorder != "little":
    raise ImportError("egressd.engine.sockio needs 64-bit little-endian Linux")

_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int

MSG_WAITFORONE = 0x10000
OUTER = 28                  # the outer IPv4 (20) + UDP (8) header written in front
SLOT = 9216                 # bytes per received packet: GWLB's 8,568-byte datagrams + OUTER fit
NAME = 16                   # sockaddr_in
CONTROL = 32                # CMSG_SPACE(sizeof(struct in_pktinfo))
_W_NAME, _W_NAMELEN, _W_IOV, _W_IOVLEN, _W_CONTROL, _W_CONTROLLEN, _W_FLAGS, _W_LEN = range(8)
_MSG_TRUNC = socket.MSG_TRUNC
_SOL_IP, _IP_PKTINFO = 0, 8
_SO_RCVBUFFORCE, _SO_SNDBUFFORCE = 33, 32
_SOL_PACKET, _PACKET_QDISC_BYPASS = 263, 20
LL_NAME = 20                # sockaddr_ll
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_LOW32 = np.uint64(0xFFFFFFFF)


class MessageVector:
    """`n` mmsghdr entries of one iovec each, with a socket address of `name` bytes
    (sockaddr_in by default) and `control` bytes of ancillary space per message; every
    pointer set once, here."""

    def __init__(self, n: int, control: int = 0, name: int = NAME) -> None:
        self.n = n
        self.hdr = np.zeros((n, 8), np.uint64)
        self.iov = np.zeros((n, 2), np.uint64)
        self.names = np.zeros((n, name), np.uint8)
        self.control = np.zeros((n, max(control, 1)), np.uint8)
        self.control_len = control
        rows = np.arange(n, dtype=np.uint64)
        self.hdr[:, _W_NAME] = self.names.ctypes.data + rows * name
        self.hdr[:, _W_NAMELEN] = name
        self.hdr[:, _W_IOV] = self.iov.ctypes.data + rows * 16
        self.hdr[:, _W_IOVLEN] = 1
        if control:
            self.hdr[:, _W_CONTROL] = self.control.ctypes.data + rows * self.control.shape[1]
            self.hdr[:, _W_CONTROLLEN] = control

    def address(self, i: int) -> int:
        return self.hdr.ctypes.data + 64 * i


def _raise_errno(what: str) -> None:
    e = ctypes.get_errno()
    raise OSError(e, f"{what}: {os.strerror(e)}")


def recv_batch(fd: int, vec: MessageVector, flags: int = MSG_WAITFORONE) -> int:
    """recvmmsg into `vec`: the number of datagrams, 0 on a timeout or a signal.

    MSG_TRUNC makes each msg_len the datagram's true length, so an oversize one is
    recognised (its slot holds the first bytes)."""
    got = _recvmmsg(fd, vec.address(0), vec.n, flags | _MSG_TRUNC, None)
    if got < 0:
        if ctypes.get_errno() in _AGAIN:
            return 0
        _raise_errno("recvmmsg")
    return got


def send_batch(fd: int, vec: MessageVector, start: int, n: int) -> tuple[int, int]:
    """sendmmsg messages start..start+n-1 of `vec`: (sent, failed).

    The kernel stops at the first message it cannot send; that one is counted failed
    and skipped (a full socket buffer is retried), so the loop runs at most 2n calls."""
    sent = failed = 0
    k, n = start, start + n
    for _ in range(2 * (n - start) + 1):
        if k >= n:
            break
        r = _sendmmsg(fd, vec.address(k), n - k, 0)
        if r > 0:
            sent += r
            k += r
            continue
        e = ctypes.get_errno()
        if r < 0 and e in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
            continue
        failed += 1
        k += 1
    failed += n - k
    return sent, failed


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    # SO_*BUFFORCE passes net.core.*mem_max (needs CAP_NET_ADMIN); else the capped one
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def udp_socket(addr: str, port: int = GENEVE_PORT, reuseport: bool = False,
               rcvbuf: int = 64 << 20, timeout_s: float = 0.2) -> socket.socket:
    """A UDP socket bound to (addr, port) that reports each datagram's local address
    and times a blocking receive out after `timeout_s` (so signals and draining are seen)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.setsockopt(_SOL_IP, _IP_PKTINFO, 1)
        _set_buffer(s, _SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
        sec = int(timeout_s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                     np.array([sec, int((timeout_s - sec) * 1e6)], np.int64).tobytes())
        s.bind((addr, port))
    except BaseException:
        s.close()
        raise
    return s


def raw_socket(sndbuf: int = 16 << 20) -> socket.socket:
    """The raw IPv4 socket returns leave through (needs CAP_NET_RAW)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    _set_buffer(s, _SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
    return s


def packet_socket(ifname: str, sndbuf: int = 16 << 20) -> socket.socket:
    """An AF_PACKET socket that sends whole Ethernet frames out of interface `ifname`
    straight to its driver (PACKET_QDISC_BYPASS: no qdisc, no routing, no netfilter);
    needs CAP_NET_RAW.  Protocol 0: it receives nothing, so incoming traffic is not
    copied to it."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((ifname, 0))
        s.setsockopt(_SOL_PACKET, _PACKET_QDISC_BYPASS, 1)
        _set_buffer(s, _SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
    except BaseException:
        s.close()
        raise
    return s


def sockaddr_ll(ifindex: int, mac: bytes, protocol: int = 0x0800) -> np.ndarray:
    """struct sockaddr_ll (20 bytes) naming `mac` on `ifindex`, as a uint8 row."""
    return np.frombuffer(struct.pack("<HHiHBB8s", socket.AF_PACKET, socket.htons(protocol), ifindex,
                                     1, 0, 6, mac), np.uint8)


@njit(cache=True, nogil=True)
def _frame(hdr, names, control, n, slot, local, port, buf, off, caplen, wirelen, link, ts_ns, now,
           control_len):
    """Write the outer IPv4 + UDP header in front of each received datagram, fill the
    reader's columns, and make the message entries ready for the next receive."""
    room = slot - OUTER
    for i in range(n):
        length = np.int64(hdr[i, _W_LEN] & _LOW32)
        if length > 0xFFFF - OUTER:    # no UDP datagram is, but never trust a length
            length = 0xFFFF - OUTER
        got = min(length, room)
        s = np.int64(i) * slot
        dst = np.int64(local)
        clen = np.int64(hdr[i, _W_CONTROLLEN] & _LOW32)
        # one cmsghdr (len 8 bytes, level 4, type 4) then in_pktinfo: ifindex, spec_dst, addr
        if (clen >= 28 and u8(control[i], 8) == _SOL_IP and u8(control[i], 12) == _IP_PKTINFO
                and u8(control[i], 0) >= 28):
            dst = np.int64((u8(control[i], 24) << 24) | (u8(control[i], 25) << 16)
                           | (u8(control[i], 26) << 8) | u8(control[i], 27))
        tot = OUTER + length
        buf[s] = 0x45
        buf[s + 1] = 0
        buf[s + 2] = tot >> 8
        buf[s + 3] = tot & 0xFF
        buf[s + 4] = 0
        buf[s + 5] = 0
        buf[s + 6] = 0x40               # DF
        buf[s + 7] = 0
        buf[s + 8] = 64
        buf[s + 9] = 17
        buf[s + 10] = 0
        buf[s + 11] = 0
        for k in range(4):
            buf[s + 12 + k] = names[i, 4 + k]
            buf[s + 16 + k] = (dst >> (24 - 8 * k)) & 0xFF
        c = ~ones_sum(buf, s, 20) & 0xFFFF
        buf[s + 10] = c >> 8
        buf[s + 11] = c & 0xFF
        ulen = 8 + length
        buf[s + 20] = names[i, 2]
        buf[s + 21] = names[i, 3]
        buf[s + 22] = port >> 8
        buf[s + 23] = port & 0xFF
        buf[s + 24] = ulen >> 8
        buf[s + 25] = ulen & 0xFF
        buf[s + 26] = 0
        buf[s + 27] = 0
        off[i] = s
        caplen[i] = OUTER + got
        wirelen[i] = tot
        link[i] = LINKTYPE_RAW
        ts_ns[i] = now
        hdr[i, _W_NAMELEN] = NAME
        hdr[i, _W_CONTROLLEN] = control_len
        hdr[i, _W_FLAGS] = 0


class Receiver:
    """recvmmsg straight into the slots of one PacketBatch (its buffer: `slots` slots of
    SLOT bytes, then `extra_bytes` the pipeline keeps from `extra_base` on)."""

    def __init__(self, sock: socket.socket, slots: int, extra_bytes: int = 0) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        bound, self.port = sock.getsockname()
        self.local = int.from_bytes(socket.inet_aton(bound), "big")
        self.extra_base = slots * SLOT
        self.batch = PacketBatch(slots, np.zeros(self.extra_base + extra_bytes, np.uint8))
        self.vec = MessageVector(slots, CONTROL)
        base = self.batch.buf.ctypes.data + OUTER
        self.vec.iov[:, 0] = base + np.arange(slots, dtype=np.uint64) * SLOT
        self.vec.iov[:, 1] = SLOT - OUTER

    def inject(self, datagrams: list[bytes], source: tuple[str, int], now_ns: int) -> PacketBatch:
        """A batch of `datagrams` framed exactly as if received from `source` (warm-up
        and tests: the same kernel as `receive`)."""
        n = min(len(datagrams), self.batch.capacity)
        v = self.vec
        for i, d in enumerate(datagrams[:n]):
            room = min(len(d), SLOT - OUTER)
            start = i * SLOT + OUTER
            self.batch.buf[start:start + room] = np.frombuffer(d[:room], np.uint8)
            v.names[i] = np.frombuffer(struct.pack("<HH4s8x", socket.AF_INET, socket.htons(source[1]),
                                                   socket.inet_aton(source[0])), np.uint8)
            v.hdr[i, _W_LEN] = len(d)
            v.hdr[i, _W_CONTROLLEN] = 0
        return self._framed(n, now_ns)

    def receive(self) -> PacketBatch | None:
        """The next batch (reused: valid until the next call), None after a timeout;
        stamped with the time it arrived (time.time_ns)."""
        n = recv_batch(self.fd, self.vec)
        return self._framed(n, time.time_ns()) if n else None

    def _framed(self, n: int, now_ns: int) -> PacketBatch:
        b = self.batch
        b.reset(n)
        _frame(self.vec.hdr, self.vec.names, self.vec.control, n, SLOT, self.local, self.port,
               b.buf, b.off, b.caplen, b.wirelen, b.link, b.ts_ns, now_ns, CONTROL)
        return b


@njit(cache=True, nogil=True)
def _vectors(base, buf, off, caplen, l3, verdict, n, want, hdr, iov, names, k):
    """Add a message for every row whose verdict is `want`: its IP packet (from the
    outer IPv4 header on) to the header's destination.  Rows whose IPv4 header is not
    within the frame are skipped.  Returns the new message count."""
    cap = hdr.shape[0]
    for i in range(n):
        if verdict[i] != want or k >= cap:
            continue
        c = np.int64(caplen[i])
        p = np.int64(l3[i])
        if p + 20 > c:
            continue
        s = off[i] + p
        iov[k, 0] = base + np.uint64(s)
        iov[k, 1] = np.uint64(c - p)
        names[k, 0] = 2                 # AF_INET, little-endian
        names[k, 1] = 0
        names[k, 2] = 0
        names[k, 3] = 0
        for j in range(4):
            names[k, 4 + j] = buf[s + 16 + j]
        k += 1
    return k


class Sender:
    """sendmmsg of whole batches' chosen rows through a raw IPv4 socket."""

    def __init__(self, sock: socket.socket, capacity: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.vec = MessageVector(capacity)
        self.sent = 0
        self.failed = 0

    def add(self, b: PacketBatch, k: int, want: int = Verdict.PASS) -> int:
        """Queue the `want` rows of `b` after the first `k` messages; the new count.
        `b` must stay alive until `flush`."""
        if self.vec.n < k + b.n:
            self.vec = _grown(self.vec, k, k + b.n)
        return int(_vectors(np.uint64(b.buf.ctypes.data), b.buf, b.off, b.caplen, b.l3, b.verdict,
                            b.n, np.uint8(want), self.vec.hdr, self.vec.iov, self.vec.names, k))

    def flush(self, k: int) -> None:
        if k:
            sent, failed = send_batch(self.fd, self.vec, 0, k)
            self.sent += sent
            self.failed += failed


def _grown(vec: MessageVector, keep: int, n: int) -> MessageVector:
    """A larger vector holding the first `keep` messages of `vec` (pointers re-aimed)."""
    new = MessageVector(max(n, 2 * vec.n))
    new.iov[:keep] = vec.iov[:keep]
    new.names[:keep] = vec.names[:keep]
    return new
