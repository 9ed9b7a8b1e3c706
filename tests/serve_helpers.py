"""Running `egressd serve` and `egressd gwlb-sim` in two namespaces (bench.netns), and
reading what comes back with tools nobody here wrote (dpkt, prometheus_client's parser)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import dpkt
from prometheus_client.parser import text_string_to_metric_families

from egressd.bench.netns import APPLIANCE_ADDR, GWLB_ADDR, Pair
from egressd.engine.pcapio import LINKTYPE_RAW
from egressd.geneve import gwlbsim

HEALTH, METRICS = 18080, 19100


class Served:
    """One `egressd serve` in the appliance namespace, its log in a file."""

    def __init__(self, pair: Pair, tmp: Path, *flags: str) -> None:
        self.pair = pair
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        self.proc = pair.exec(pair.appliance, ["egressd", "serve", "--health-port", str(HEALTH),
                                               "--metrics-port", str(METRICS), *flags],
                              stdout=subprocess.DEVNULL, stderr=self.log.open("w"))

    def health(self) -> int | None:
        """HTTP status of GET /health from the GWLB side, None when nothing listens."""
        def get():
            try:
                return urllib.request.urlopen(f"http://{APPLIANCE_ADDR}:{HEALTH}/health", timeout=2).status
            except urllib.error.HTTPError as e:
                return e.code
            except OSError:
                return None
        return self.pair.call(self.pair.gwlb, get)

    def tcp_check(self) -> bool:
        """A TCP health check: the port accepts a connection."""
        def connect():
            with socket.create_connection((APPLIANCE_ADDR, HEALTH), timeout=2):
                return True
        return self.pair.call(self.pair.gwlb, connect)

    def wait_health(self, want: int, timeout: float = 300.0) -> list[int | None]:
        """Poll until health is `want`; every status seen, in order (deduplicated).  The
        default timeout allows for numba compiling the kernels when its cache is cold."""
        seen: list[int | None] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            h = self.health()
            if not seen or seen[-1] != h:
                seen.append(h)
            if h == want:
                return seen
            assert self.proc.poll() is None, self.text()
            time.sleep(0.1)
        raise AssertionError(f"health never {want}: {seen}\n{self.text()}")

    def metrics(self) -> dict[str, dict[tuple, float]]:
        """Every sample: name -> {sorted label items: value}."""
        text = self.pair.call(self.pair.gwlb, lambda: urllib.request.urlopen(
            f"http://{APPLIANCE_ADDR}:{METRICS}/metrics", timeout=2).read().decode())
        out: dict[str, dict[tuple, float]] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    def signal(self, sig: int) -> None:
        # `ip netns exec` execs egressd: the process is the supervisor itself
        os.kill(self.proc.pid, sig)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def total(m: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    return sum(v for k, v in m.get(name, {}).items() if set(labels.items()) <= set(k))


def simulate(pair: Pair, capture: Path, out: Path | None = None, *flags: str) -> dict:
    # a return later than --linger after the last one would be missed: allow for a busy host
    argv = ["egressd", "gwlb-sim", str(capture), "--target", APPLIANCE_ADDR, "--linger", "1", *flags]
    if out:
        argv += ["--out", str(out)]
    p = pair.exec(pair.gwlb, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    return json.loads(stdout.splitlines()[-1])


def as_gwlb_sends(capture: Path, out: Path) -> Path:
    """`capture` with the outer addresses the simulator gives it (raw IPv4 pcap): what
    the appliance receives, for `egressd replay`."""
    cap = gwlbsim.load(capture, GWLB_ADDR, APPLIANCE_ADDR)
    with out.open("wb") as f:
        w = dpkt.pcap.Writer(f, linktype=LINKTYPE_RAW, nano=True)
        for k, (o, n) in enumerate(zip(cap.offs, cap.lens)):
            w.writepkt(cap.data[o:o + n].tobytes(), ts=k * 1e-3)
    return out


def returned(pcap: Path) -> list[tuple]:
    """Each returned packet as (outer src, outer dst, UDP sport, dport, length, UDP
    payload = GENEVE header, options, inner packet), sorted; the outer IPv4 header
    checksum is checked on the way."""
    rows = []
    with pcap.open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            assert isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP)
            assert dpkt.in_cksum(bytes(frame[14:14 + ip.hl * 4])) == 0
            u = ip.data
            rows.append((socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), u.sport, u.dport, u.ulen,
                         bytes(u.data)))
    return sorted(rows)


def udp_checksums(pcap: Path) -> set[int]:
    with pcap.open("rb") as f:
        return {dpkt.ethernet.Ethernet(frame).data.data.sum for _ts, frame in dpkt.pcap.Reader(f)}
