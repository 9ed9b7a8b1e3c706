"""pytest-benchmark runs of bench/flows.py: `pytest bench/test_flows.py`.

Each benchmark also checks what it measured: the random traffic only looks flows up
(no flow lost beyond the table's own churn), the flood leaves every established flow
in place and the table's memory unchanged.
"""
from __future__ import annotations

import pytest

from egressd.bench.flows import (BATCH, S, T0, FlowSet, lost_flows, open_flows, random_traffic,
                                 syn_flood, track_all, warm_up)
from egressd.engine.batch import PacketBatch
from egressd.engine.flows import FlowConfig, FlowTable

PACKETS = 4_000_000


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    warm_up()


@pytest.mark.parametrize("flows", [100_000, 1_000_000])
def test_track_random_packets(benchmark, flows):
    table = FlowTable()
    fs = FlowSet(flows)
    open_flows(table, fs, PacketBatch(BATCH))
    opened = table.counters()["created"]
    batches = random_traffic(fs, PACKETS)
    benchmark.pedantic(track_all, args=(table, batches), rounds=3, iterations=1)
    benchmark.extra_info["packets_per_s"] = round(PACKETS / benchmark.stats["min"])
    benchmark.extra_info["table_bytes"] = table.nbytes
    # a few flows of a 95%-full table are evicted and re-created; never most of them
    assert table.counters()["created"] - opened < flows // 50


def test_syn_flood_10m_into_1m(benchmark):
    table = FlowTable()
    est = FlowSet(10_000)
    open_flows(table, est, PacketBatch(BATCH), T0 + 99 * S)
    arrays = [(id(a), a.nbytes) for a in (table.slots, table.tags)]
    rate = benchmark.pedantic(syn_flood, args=(table, 10_000_000), rounds=1, iterations=1)
    benchmark.extra_info["packets_per_s"] = round(rate)
    assert lost_flows(table, est, T0 + 200 * S) == 0
    assert [(id(a), a.nbytes) for a in (table.slots, table.tags)] == arrays
    assert table.counters()["active"] == FlowConfig().capacity
