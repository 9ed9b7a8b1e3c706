"""engine.sockio's kernels on loopback (recvmmsg framing, raw sendmmsg of chosen rows)
and gwlbsim's capture loading, checked with dpkt and plain sockets."""
from __future__ import annotations

import socket
import time

import dpkt
import numpy as np
from conftest import REPO

from egressd.engine.batch import PacketBatch
from egressd.engine.pcapio import LINKTYPE_RAW
from egressd.engine.reasons import Verdict
from egressd.engine.sockio import OUTER, SLOT, Receiver, Sender, raw_socket, udp_socket
from egressd.geneve import gwlbsim

SIZES = [0, 1, 100, 1500, SLOT - OUTER, SLOT - OUTER + 1, 20000]


def test_receive_frames_each_datagram_as_an_ipv4_packet() -> None:
    rx = Receiver(udp_socket("0.0.0.0", 0), 16)      # the local address comes from IP_PKTINFO
    port = rx.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind(("127.0.0.2", 0))
        sent = [bytes((k * 7 + j) & 0xFF for j in range(n)) for k, n in enumerate(SIZES)]
        for d in sent:
            c.sendto(d, ("127.0.0.1", port))
        sport = c.getsockname()[1]
        got: list[tuple[int, int, bytes]] = []
        end = time.monotonic() + 5
        while len(got) < len(sent) and time.monotonic() < end:
            b = rx.receive()
            if b is not None:
                got += [(int(b.caplen[i]), int(b.wirelen[i]), b.frame(i)) for i in range(b.n)]
                assert (b.link[:b.n] == LINKTYPE_RAW).all()
    assert len(got) == len(sent)
    for (caplen, wirelen, frame), d in zip(got, sent):
        assert wirelen == OUTER + len(d)
        if len(d) > SLOT - OUTER:        # oversize: the slot holds the start, decap drops it
            assert caplen == SLOT and frame[OUTER:] == d[:SLOT - OUTER]
            continue
        ip = dpkt.ip.IP(frame)
        assert dpkt.in_cksum(frame[:20]) == 0 and ip.len == len(frame) == caplen
        assert (socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), ip.p) == ("127.0.0.2", "127.0.0.1", 17)
        assert (ip.data.sport, ip.data.dport, ip.data.ulen, bytes(ip.data.data)) == (sport, port, 8 + len(d), d)
    rx.sock.close()


def test_receive_times_out_empty() -> None:
    rx = Receiver(udp_socket("127.0.0.1", 0, timeout_s=0.1), 4)
    t0 = time.monotonic()
    assert rx.receive() is None
    assert 0.05 < time.monotonic() - t0 < 2
    rx.sock.close()


def test_sender_sends_exactly_the_passed_rows() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(2)
        port = sink.getsockname()[1]
        packets = []
        for k in range(40):
            u = dpkt.udp.UDP(sport=1000 + k, dport=port, data=b"row %d" % k + bytes(k * 37))
            u.ulen = 8 + len(u.data)
            ip = dpkt.ip.IP(src=socket.inet_aton("127.0.0.3"), dst=socket.inet_aton("127.0.0.1"),
                            p=17, ttl=64, data=u)
            ip.len = 20 + u.ulen
            packets.append(bytes(ip))
        data = b"".join(packets)
        b = PacketBatch(len(packets), np.frombuffer(data, np.uint8).copy())
        b.reset(len(packets))
        sizes = np.array([len(p) for p in packets])
        b.off[:] = np.cumsum(sizes) - sizes
        b.caplen[:] = sizes
        b.verdict[:] = np.where(np.arange(len(packets)) % 3 == 0, Verdict.DROP, Verdict.PASS)
        tx = Sender(raw_socket(), 8)                        # grows past 8 messages
        tx.flush(tx.add(b, 0))
        want = {bytes(dpkt.ip.IP(p).data.data) for k, p in enumerate(packets) if k % 3}
        got = set()
        try:
            while len(got) < len(want):
                got.add(sink.recv(65536))
        except TimeoutError:
            pass
        assert got == want and tx.sent == len(want) and tx.failed == 0
        tx.sock.close()


def test_gwlbsim_load_keeps_every_outer_ipv4_packet() -> None:
    """Malformed frames included: what dpkt finds as a whole outer IPv4 packet is
    loaded, rewritten; the rest is counted skipped."""
    path = REPO / "pcaps" / "malformed-gwlb.pcap"
    cap = gwlbsim.load(path, "192.0.2.1", "192.0.2.2")
    want = []
    with path.open("rb") as f:
        frames = [bytes(fr) for _ts, fr in dpkt.pcap.Reader(f)]
    for fr in frames:
        raw = fr[14:]
        if len(fr) < 14 or fr[12:14] != b"\x08\x00" or len(raw) < 20 or raw[0] >> 4 != 4:
            continue
        ihl, tot = (raw[0] & 15) * 4, int.from_bytes(raw[2:4], "big")
        if 20 <= ihl <= tot <= len(raw):
            want.append(raw[:tot])
    assert cap.n == len(want) and cap.skipped == len(frames) - len(want)
    for k, w in enumerate(want):
        got = cap.data[cap.offs[k]:cap.offs[k] + cap.lens[k]].tobytes()
        ihl = (w[0] & 15) * 4
        assert got[12:20] == socket.inet_aton("192.0.2.1") + socket.inet_aton("192.0.2.2")
        assert dpkt.in_cksum(got[:ihl]) == 0
        assert got[:10] == w[:10] and got[20:ihl] == w[20:ihl]
        udp = w[9] == 17 and len(w) >= ihl + 8
        keep = ihl + 8 if udp else ihl     # everything after the UDP checksum is as captured
        assert got[keep:] == w[keep:] and got[ihl:ihl + 6] == w[ihl:ihl + 6]
        if udp and w[ihl + 6:ihl + 8] != b"\0\0" and _udp_ok(w, ihl):
            assert _udp_ok(got, ihl)       # a right checksum stays right (RFC 1624 update)


def _udp_ok(p: bytes, ihl: int) -> bool:
    pseudo = p[12:20] + bytes([0, 17]) + (len(p) - ihl).to_bytes(2, "big")
    return dpkt.in_cksum(pseudo + p[ihl:]) == 0
