"""Every pipeline stage alone (pytest-benchmark): `python -m pytest bench/test_stages.py`.

The input is one batch of generated default-mix traffic (`egressd gen`: TLS, HTTP, DNS,
QUIC, UDP, ICMP, a fifth IPv6, split ClientHellos) in the middle of its capture, so the
tables hold the flows of the batches before it, decided by a 10 000-domain allowlist
that lists half the traffic's names, plus a DNS Firewall list that blocks some names
(its NODATA answers give the actions stage work).

The stages are the pipeline's own: `Pipeline.process` runs with its stage timer
replaced, so that every stage before the measured one runs once, untimed, and the
measured one is handed over as it would have run.  Its input (the batch and every
table it may change) is then copied, and put back before each round, so every round
does the same work on the same state; each round's output must be the same, and is
checked for what the stage is for.  Rounds are a few hundred microseconds; timings
are reported (extra_info: packets/s), never asserted.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from egressd.bench.gen import generate
from egressd.bench.hostnames import EGRESS_NAMES
from egressd.bench.policy import allowlist, rule_group
from egressd.engine.batch import COLUMNS, PacketBatch
from egressd.engine.eve import EVE_TYPES, EveWriter
from egressd.engine.flows import FlowConfig
from egressd.engine.frag import FragConfig
from egressd.engine.l7 import L7Config
from egressd.engine.pcapio import CaptureReader, PcapWriter
from egressd.engine.pipeline import Pipeline
from egressd.engine.reasons import Verdict
from egressd.rules.compile import compile_policy
from egressd.rules.load import load_policies

FLOWS, PACKETS_PER_FLOW = 3000, 10      # ~25 000 packets, 6 batches of 4096
MEASURED_BATCH = 3                      # the batches before it fill the tables
# Tables sized for the capture, not the defaults: their state is copied before each
# round, and a copy of the default ~100 MB would take longer than the stages.
CAPACITY = 1 << 16                      # flow table slots
L7 = L7Config(buffers=64, arena_bytes=1 << 20, arena_names=1 << 16, quic_flows=1024)
FRAG = FragConfig(max_datagrams=16)
READ_CHUNK = 4 << 20                    # the reader's buffer (default 16 MiB)
DOMAINS = 10_000
ROUNDS, WARMUP = 15, 2
STAGES = ("decap", "parse", "reassemble", "flows", "names", "decide", "act", "return", "eve")


class _Reached(Exception):
    """Raised by the stage timer when `process` hands over the stage to measure."""


@dataclass
class StageRun:
    """The measured stage `run()` and how to put its input back."""

    pipe: Pipeline
    batch: PacketBatch
    run: Callable[[], object]
    saved: dict
    memo: dict

    def restore(self) -> None:
        """The batch and every table as they were before the stage first ran."""
        state = copy.deepcopy(self.saved, dict(self.memo))
        self.pipe.__dict__.update(state["pipe"])
        self.batch.__dict__.update(state["batch"])


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The capture and the policy (10 000 domains, half the traffic's names among
    them; a DNS Firewall list blocking a few names), compiled."""
    d = tmp_path_factory.mktemp("stages")
    capture = d / "default-mix.pcap"
    counts = generate(capture, flows=FLOWS, packets_per_flow=PACKETS_PER_FLOW,
                      names=list(EGRESS_NAMES), seed=8)
    rng = np.random.default_rng(0)
    (d / "allow.json").write_text(json.dumps(rule_group(
        allowlist(DOMAINS - len(EGRESS_NAMES) // 2, rng) + list(EGRESS_NAMES[::2]))))
    (d / "dns-block.txt").write_text("\n".join(EGRESS_NAMES[1::10]) + "\n")
    policy = compile_policy(load_policies([d / "allow.json", d / "dns-block.txt"]))
    return {"capture": capture, "policy": policy, "packets": counts["total"]["packets"],
            "eve": d / "eve.json"}


def stage(traffic: dict, name: str) -> StageRun:
    """The pipeline up to stage `name` of the measured batch, and that stage."""
    pipe = Pipeline(frag=FRAG, flows=FlowConfig(capacity=CAPACITY), l7=L7, policy=traffic["policy"])
    pipe.eve = EveWriter(os.devnull, EVE_TYPES, pipe)
    reader = CaptureReader(traffic["capture"], chunk_bytes=READ_CHUNK, extra_bytes=pipe.extra_bytes)
    with reader:
        for k, b in enumerate(reader):
            if k == MEASURED_BATCH:
                break
            pipe.process(b, reader.extra_base)
        assert k == MEASURED_BATCH and b.n > 1000, "capture too short"
        handed: list[Callable[[], object]] = []

        def timed(stage_name: str, fn: Callable[[], object]) -> object:
            if stage_name == name:
                handed.append(fn)
                raise _Reached
            return fn()

        pipe.timed = timed
        if name != "write":
            with pytest.raises(_Reached):
                pipe.process(b, reader.extra_base)
            run = handed[0]
        else:
            pipe.process(b, reader.extra_base)
            writer = PcapWriter(os.devnull)
            run = lambda: writer.write(b, Verdict.PASS)
        del pipe.timed                  # the class's timer again
        # what no stage changes is shared, not copied: the policy, the open EVE file
        memo = {id(traffic["policy"]): traffic["policy"], id(pipe.eve): pipe.eve}
        saved = copy.deepcopy({"pipe": dict(pipe.__dict__), "batch": dict(b.__dict__)}, dict(memo))
    return StageRun(pipe, b, run, saved, memo)


def _digest(b: PacketBatch) -> str:
    """Every column of the batch's packets, and its frames' bytes."""
    h = hashlib.sha256()
    for col in COLUMNS:
        h.update(getattr(b, col)[:b.n].tobytes())
    end = int((b.off[:b.n] + b.caplen[:b.n]).max())
    h.update(b.buf[:end].tobytes())
    return h.hexdigest()


def measure(benchmark, s: StageRun) -> list[str]:
    """Time s.run over ROUNDS rounds after WARMUP, its input put back before each;
    packets/s in extra_info.  The digests of the batch after each round."""
    digests: list[str] = []
    started = [False]

    def setup() -> None:
        if started[0]:
            digests.append(_digest(s.batch))
        started[0] = True
        s.restore()

    benchmark.pedantic(s.run, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP)
    digests.append(_digest(s.batch))
    benchmark.extra_info["packets"] = s.batch.n
    if benchmark.stats:
        benchmark.extra_info["packets_per_s"] = round(s.batch.n / benchmark.stats.stats.min)
    assert len(digests) == ROUNDS + WARMUP and len(set(digests)) == 1, "rounds did different work"
    return digests


GROUP = f"stages (one batch of default-mix traffic, {DOMAINS} domains)"


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("name", ["decap", "parse", "reassemble", "flows", "names"])
def test_bench_stage_inspect(benchmark, traffic: dict, name: str) -> None:
    s = stage(traffic, name)
    measure(benchmark, s)
    b, n = s.batch, s.batch.n
    dropped = b.verdict[:n] == Verdict.DROP
    assert not dropped.any(), "generated traffic must pass inspection"
    if name == "decap":
        assert set(np.unique(b.gproto[:n])) == {0x0800, 0x86DD}
    if name in ("parse", "reassemble"):
        assert set(np.unique(b.ipver[:n])) == {4, 6}
    if name == "flows":
        assert (b.flow[:n] >= 0).all() and len(np.unique(b.flow_id[:n])) > 100
    if name == "names":
        assert (b.name_id[:n] >= 0).sum() > 100     # ClientHellos, Hosts, queries, Initials


@pytest.mark.benchmark(group=GROUP)
def test_bench_stage_decide(benchmark, traffic: dict) -> None:
    s = stage(traffic, "decide")
    measure(benchmark, s)
    v = s.batch.verdict[:s.batch.n]
    assert (v == Verdict.PASS).sum() > 1000 and (v == Verdict.DROP).sum() > 10
    assert not (v == Verdict.PENDING).any()


@pytest.mark.benchmark(group=GROUP)
def test_bench_stage_actions(benchmark, traffic: dict) -> None:
    s = stage(traffic, "act")
    created = [s.run()]
    s.restore()
    measure(benchmark, s)
    assert created[0] is not None and created[0].n > 0, "no DNS answer made"


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("name", ["return", "write", "eve"])
def test_bench_stage_output(benchmark, traffic: dict, name: str) -> None:
    s = stage(traffic, name)
    measure(benchmark, s)
    if name == "eve":
        assert sum(s.pipe.eve.events.values()) > 100
