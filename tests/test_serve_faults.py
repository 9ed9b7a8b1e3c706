"""`egressd serve` under hostile and heavy input, and with two workers.

Faults: a flood of malformed datagrams, datagrams larger than a receive slot, and more
flows than the flow table holds must not stop the appliance from serving good traffic,
and the counters must say what happened.  Workers: with two, the kernel's SO_REUSEPORT
hash keeps every flow (one GWLB outer 5-tuple) on one worker, so the returns are what
replay returns and no flow is created twice.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

import dpkt
import pytest
from conftest import REPO
from gwlb import wrap, write_pcap
from scapy.layers.inet import IP, TCP

from egressd.bench.netns import APPLIANCE_ADDR, veth_pair
from egressd.cli import main
from serve_helpers import Served, as_gwlb_sends, returned, simulate, total

SAMPLE = REPO / "pcaps" / "sample-gwlb.pcap"
POLICY = REPO / "rules" / "examples" / "egress-allowlist.yaml"
FLOWS = 300          # > 32, the smallest flow table
MALFORMED = 3000
OVERSIZE = 20        # datagrams of OVERSIZE_BYTES, above the 9,188 bytes a slot takes
OVERSIZE_BYTES = 12000


def _many_flows_then_sample(tmp: Path) -> Path:
    """FLOWS TCP handshakes opened, each from its own GWLB source port, then the sample."""
    frames = []
    for k in range(FLOWS):
        client = ("10.9.%d.%d" % (k // 250, k % 250 + 1), 30000 + k)
        syn = IP(src=client[0], dst="198.51.100.200") / TCP(sport=client[1], dport=443, flags="S", seq=k)
        frames.append(wrap(bytes(syn), gwlb_port=20000 + k))
    with SAMPLE.open("rb") as f:
        frames += [bytes(fr) for _ts, fr in dpkt.pcap.Reader(f)]
    return write_pcap(tmp / "flows-then-sample.pcap", frames)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _many_flows_then_sample(tmp_path_factory.mktemp("capture"))


def _replay(capture: Path, tmp: Path, *flags: str) -> list[tuple]:
    sends = as_gwlb_sends(capture, tmp / "sends.pcap")
    assert main(["replay", str(sends), "--out", str(tmp / "replay.pcap"), *flags]) == 0
    return returned(tmp / "replay.pcap")


def _flood(pair) -> None:
    """Malformed and oversize datagrams to UDP 6081, from the GWLB namespace."""
    rnd = random.Random(7)

    def send():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for k in range(MALFORMED):
                s.sendto(rnd.randbytes(rnd.randrange(0, 200)), (APPLIANCE_ADDR, 6081))
            for _ in range(OVERSIZE):
                s.sendto(bytes(OVERSIZE_BYTES), (APPLIANCE_ADDR, 6081))
    pair.call(pair.gwlb, send)


def test_faults_do_not_stop_good_traffic(tmp_path: Path, capture: Path) -> None:
    want = _replay(capture, tmp_path, "--policy", str(POLICY), "--flow-capacity", "32")
    with veth_pair() as pair:
        s = Served(pair, tmp_path, "--policy", str(POLICY), "--flow-capacity", "32")
        try:
            s.wait_health(200)
            _flood(pair)
            out = tmp_path / "returned.pcap"
            stats = simulate(pair, capture, out)
            assert s.proc.poll() is None and s.health() == 200
            assert returned(out) == want                # the good traffic, as replay decides it
            m = s.metrics()
        finally:
            assert s.stop() == 0
    sent = MALFORMED + OVERSIZE + stats["sent"]
    assert total(m, "egressd_packets_received_total") == sent
    assert total(m, "egressd_packets_dropped_total", reason="capture_truncated") == OVERSIZE
    by_stage = {st: total(m, "egressd_packets_dropped_total", stage=st)
                for st in ("outer", "geneve", "gwlb", "inner")}
    assert sum(by_stage.values()) == MALFORMED           # every malformed datagram, by reason
    evicted = sum(total(m, "egressd_flows_total", event=e)
                  for e in ("evicted_closed", "evicted_embryonic", "evicted_idle"))
    assert evicted >= FLOWS - 32
    assert total(m, "egressd_flows_active") <= 32


def test_two_workers_keep_each_flow_on_one(tmp_path: Path, capture: Path) -> None:
    want = _replay(capture, tmp_path, "--stats", str(tmp_path / "stats.json"))
    flows = __import__("json").loads((tmp_path / "stats.json").read_text())["flows"]["created"]
    with veth_pair() as pair:
        s = Served(pair, tmp_path, "--workers", "2", "--flow-capacity", "4096")
        try:
            s.wait_health(200)
            out = tmp_path / "returned.pcap"
            simulate(pair, capture, out)
            m = s.metrics()
        finally:
            assert s.stop() == 0
    assert returned(out) == want
    per_worker = [total(m, "egressd_packets_received_total", worker=w) for w in ("0", "1")]
    assert min(per_worker) > 0 and sum(per_worker) == FLOWS + 105    # the kernel spread them
    # a flow split between workers would be created by each
    assert total(m, "egressd_flows_total", event="created") == flows
