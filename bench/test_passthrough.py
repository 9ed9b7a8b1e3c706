"""Pass-through benchmarks (pytest-benchmark) and the checks that make them fair.

Run with `python -m pytest bench/` (the default `python -m pytest` collects tests/
only).  Timings are reported, never asserted: the machine is shared.  What is
asserted is that the traffic is what GWLB sends and that the dpkt baseline does
the same work as egressd, byte for byte, so that the ratio compares like with like.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import dpkt
import numpy as np
import pytest

from egressd.bench.baselines import dpkt_passthrough
from egressd.bench.traffic import GWLB_IP, IMIX, make_capture
from egressd.engine.batch import PacketBatch
from egressd.engine.pcapio import CaptureReader, PcapWriter
from egressd.engine.pipeline import replay
from egressd.engine.reasons import N_REASONS, Verdict
from egressd.geneve.decap import decap
from egressd.geneve.encap import return_inplace

REPO = Path(__file__).resolve().parent.parent
AWS_CAPTURE = REPO.parent / "shared" / "corpus" / "suricata-verify" / "bug-6402-01" / "input.pcap"
BENCH_PACKETS = 50_000
ROUNDS = 20  # rounds of an in-memory kernel benchmark (a few ms each)
GWLB_ADDR = int.from_bytes(GWLB_IP, "big")


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IMIX GWLB capture of BENCH_PACKETS packets (22 MB), numba warmed up on it."""
    path = make_capture(tmp_path_factory.mktemp("bench") / "gwlb.pcap", BENCH_PACKETS)
    replay(path, path.with_name("warm-up.pcap"))  # compile or load every kernel before timing
    return path


@pytest.fixture
def first_batch(capture: Path) -> Iterator[PacketBatch]:
    """The capture's first batch (up to 32768 packets), as the replay loop sees it."""
    with CaptureReader(capture) as reader:
        yield next(iter(reader))


def _rate(benchmark, packets: int) -> None:
    """Put the best round's packets/s in the report (absent under --benchmark-disable)."""
    benchmark.extra_info["packets"] = packets
    if benchmark.stats:
        benchmark.extra_info["packets_per_s"] = round(packets / benchmark.stats.stats.min)


def _frames(path: Path) -> list[tuple[Decimal, bytes]]:
    with open(path, "rb") as f:
        return list(dpkt.pcap.Reader(f))


def _counted(fn: Callable[[], object]) -> tuple[Callable[[], None], list[int]]:
    calls = [0]

    def run() -> None:
        fn()
        calls[0] += 1
    return run, calls


# -- the traffic and the baseline are what they claim ------------------------------------

def test_capture_is_gwlb_traffic_with_valid_checksums(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    assert tshark, "tshark is required (apt-get install tshark)"
    path = make_capture(tmp_path / "gwlb.pcap", 300, flows=16)
    fields = ("ip.checksum.status", "tcp.checksum.status", "udp.dstport", "udp.checksum",
              "geneve.option.class", "geneve.option.type", "frame.len", "ip.src", "tcp.srcport",
              "udp.srcport", "geneve.option.unknown.data")
    cmd = [tshark, "-r", str(path), "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
           "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,", "-E", "separator=|"]
    out = subprocess.run(cmd + [a for f in fields for a in ("-e", f)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    rows = [dict(zip(fields, (v.split(",") for v in line.split("|")))) for line in out.splitlines()]
    assert len(rows) == 300
    flows = {}
    for p in rows:
        assert p["ip.checksum.status"] == ["1", "1"]  # outer and inner: good
        assert p["tcp.checksum.status"] == ["1"]
        assert p["udp.dstport"] == ["6081"] and p["udp.checksum"] == ["0x0000"]
        assert p["geneve.option.class"] == ["0x0108"] * 3
        assert p["geneve.option.type"] == ["0x01", "0x02", "0x03"]
        assert int(p["frame.len"][0]) in {size + 82 for size, _ in IMIX}
        # GWLB keeps one source port and cookie per flow (inner 5-tuple).
        inner = (p["ip.src"][1], p["tcp.srcport"][0])
        gwlb = (p["udp.srcport"][0], p["geneve.option.unknown.data"][2])
        assert flows.setdefault(inner, gwlb) == gwlb
    assert len(flows) == 16 and len(set(flows.values())) == 16


def test_capture_is_deterministic(tmp_path: Path) -> None:
    a, b, c = (make_capture(tmp_path / f"{n}.pcap", 500, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


@pytest.mark.parametrize("source", ["sample", "malformed", "aws", "generated"])
def test_dpkt_baseline_returns_what_egressd_returns(source: str, tmp_path: Path) -> None:
    inp = {"sample": REPO / "pcaps" / "sample-gwlb.pcap", "malformed": REPO / "pcaps" / "malformed-gwlb.pcap",
           "aws": AWS_CAPTURE, "generated": tmp_path / "gwlb.pcap"}[source]
    if source == "generated":
        make_capture(inp, 2000)
    stats = replay(inp, tmp_path / "egressd.pcap")
    done = dpkt_passthrough(inp, tmp_path / "dpkt.pcap")
    assert (done.packets_in, done.packets_out) == (stats.packets_in, stats.packets_forwarded)
    ours, theirs = _frames(tmp_path / "egressd.pcap"), _frames(tmp_path / "dpkt.pcap")
    assert [f for _, f in ours] == [f for _, f in theirs]
    # dpkt carries timestamps as floats: equal to well under a microsecond.
    assert all(abs(a - b) < Decimal("1e-6") for (a, _), (b, _) in zip(ours, theirs))
    assert stats.packets_forwarded > 0


# -- kernels on one in-memory batch ----------------------------------------------------

@pytest.mark.benchmark(group="kernels (one batch in memory)")
def test_bench_decap(benchmark, first_batch: PacketBatch) -> None:
    b = first_batch
    counts = np.zeros(N_REASONS, np.uint64)
    run, calls = _counted(lambda: decap(b, counts))
    benchmark.pedantic(run, setup=lambda: b.reset(b.n), rounds=ROUNDS, warmup_rounds=2)
    _rate(benchmark, b.n)
    assert counts[0] == calls[0] * b.n and not counts[1:].any()
    assert (b.gwlb_eni[:b.n] != 0).all() and len(np.unique(b.gwlb_cookie[:b.n])) > 1


@pytest.mark.benchmark(group="kernels (one batch in memory)")
def test_bench_return_inplace(benchmark, first_batch: PacketBatch) -> None:
    b = first_batch
    counts = np.zeros(N_REASONS, np.uint64)
    decap(b, counts)
    b.verdict[:b.n] = Verdict.PASS
    benchmark.pedantic(return_inplace, args=(b,), rounds=ROUNDS, warmup_rounds=2)
    _rate(benchmark, b.n)
    # Each call swaps the addresses back and forth; every header stays well-formed.
    b.reset(b.n)
    decap(b, counts)
    assert not counts[1:].any()
    swapped = b.outer_dst[:b.n] == GWLB_ADDR
    assert swapped.all() or not swapped.any()


@pytest.mark.benchmark(group="kernels (one batch in memory)")
def test_bench_pcap_writer(benchmark, first_batch: PacketBatch) -> None:
    b = first_batch
    b.verdict[:b.n] = Verdict.PASS
    writer = PcapWriter(os.devnull)  # the pack kernel and a write(2), no page cache
    run, calls = _counted(lambda: writer.write(b, Verdict.PASS))
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=2)
    writer.commit()
    _rate(benchmark, b.n)
    assert writer.packets == calls[0] * b.n


# -- file to file, egressd and dpkt on the same capture ---------------------------------

@pytest.mark.benchmark(group=f"file to file ({BENCH_PACKETS} packets)")
def test_bench_replay(benchmark, capture: Path, tmp_path: Path) -> None:
    out = tmp_path / "returned.pcap"
    # A new output each round, as in bench/measure.py (ext4 flushes overwritten files).
    stats = benchmark.pedantic(replay, args=(capture, out), setup=lambda: out.unlink(missing_ok=True),
                               rounds=5, warmup_rounds=1)
    _rate(benchmark, BENCH_PACKETS)
    assert stats.packets_in == stats.packets_forwarded == BENCH_PACKETS


@pytest.mark.benchmark(group=f"file to file ({BENCH_PACKETS} packets)")
def test_bench_dpkt_baseline(benchmark, capture: Path, tmp_path: Path) -> None:
    out = tmp_path / "returned.pcap"
    done = benchmark.pedantic(dpkt_passthrough, args=(capture, out),
                              setup=lambda: out.unlink(missing_ok=True), rounds=2, warmup_rounds=1)
    _rate(benchmark, BENCH_PACKETS)
    assert done.packets_in == done.packets_out == BENCH_PACKETS
