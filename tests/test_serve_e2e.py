"""`egressd serve` as a GWLB target, end to end: namespaces `gwlb` and `appliance`
joined by a veth pair of MTU 9001; the GWLB simulator replays the sample capture to
serve and collects the returns, which must be what `egressd replay` returns for the
same capture and policy.  Health checks, metrics, SIGHUP with a bad and a good policy
and SIGTERM are exercised on the same running appliance, in this order.
"""
from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import REPO

from egressd.bench.netns import APPLIANCE_ADDR, GWLB_ADDR, veth_pair
from egressd.cli import main
from serve_helpers import Served, as_gwlb_sends, returned, simulate, total, udp_checksums

SAMPLE = REPO / "pcaps" / "sample-gwlb.pcap"
POLICY = REPO / "rules" / "examples" / "egress-allowlist.yaml"
CDN = b"cdn.example.com"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve")
    policy = tmp / "policy.yaml"
    shutil.copy(POLICY, policy)
    with veth_pair() as pair:
        s = Served(pair, tmp, "--policy", str(policy), "--flow-capacity", "4096", "--drain-seconds", "1.5")
        s.tmp, s.policy = tmp, policy
        try:
            s.first_health = s.wait_health(200)
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="module")
def first_run(served: Served) -> dict:
    out = served.tmp / "returned.pcap"
    return {"stats": simulate(served.pair, SAMPLE, out), "pcap": out}


def test_health_checks(served: Served) -> None:
    assert served.first_health[-1] == 200
    assert set(served.first_health) <= {None, 503, 200}    # nothing else while starting
    assert served.tcp_check()
    assert served.health() == 200


def test_returns_equal_replay(served: Served, first_run: dict) -> None:
    tmp = served.tmp
    sends = as_gwlb_sends(SAMPLE, tmp / "sends.pcap")
    assert main(["replay", str(sends), "--policy", str(POLICY), "--out", str(tmp / "replay.pcap")]) == 0
    want = returned(tmp / "replay.pcap")
    got = returned(first_run["pcap"])
    assert len(want) == 92                        # 91 passed, 1 DNS Firewall answer
    assert first_run["stats"]["sent"] == 105 and first_run["stats"]["returned"] == len(want)
    # addresses swapped (from the appliance to GWLB), ports as sent, lengths, GENEVE
    # header, options and inner packet byte-identical; only the UDP checksum differs
    assert {(r[0], r[1], r[3]) for r in got} == {(APPLIANCE_ADDR, GWLB_ADDR, 6081)}
    assert got == want
    assert udp_checksums(first_run["pcap"]) == {0}   # serve sends none (RFC 768, IPv4)


def test_metrics_count_what_happened(served: Served, first_run: dict) -> None:
    assert main(["replay", str(SAMPLE), "--policy", str(POLICY), "--out", str(served.tmp / "r2.pcap"),
                 "--stats", str(served.tmp / "stats.json")]) == 0
    import json
    stats = json.loads((served.tmp / "stats.json").read_text())
    m = served.metrics()
    assert total(m, "egressd_packets_received_total") == 105
    assert total(m, "egressd_packets_forwarded_total") == stats["packets_forwarded"] == 92
    assert total(m, "egressd_packets_created_total") == 1
    for reason, n in stats["drops"].items():
        assert total(m, "egressd_packets_dropped_total", reason=reason) == n
    assert total(m, "egressd_packets_dropped_total") == stats["packets_dropped"]
    assert total(m, "egressd_flows_total", event="created") == stats["flows"]["created"]
    assert total(m, "egressd_batch_latency_seconds_count") == total(m, "egressd_batches_total") >= 1
    assert total(m, "egressd_policy_generation") == 1
    assert total(m, "egressd_worker_ready") == 1


def _wait_log(s: Served, text: str, timeout: float = 10.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in s.text():
            return s.text()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{s.text()}")


def _payload_has(pcap: Path, needle: bytes) -> bool:
    return any(needle in r[5] for r in returned(pcap))


def test_sighup_bad_policy_keeps_the_old_one(served: Served, first_run: dict) -> None:
    assert _payload_has(first_run["pcap"], CDN)
    served.policy.write_text(POLICY.read_text().replace("rule_order: strict_order",
                                                        "rule_order: [strict_order"))
    served.signal(signal.SIGHUP)
    log = _wait_log(served, "policy reload refused")
    assert str(served.policy) in log.split("policy reload refused")[1].splitlines()[0]
    m = served.metrics()
    assert total(m, "egressd_policy_reload_failures_total") == 1
    assert total(m, "egressd_policy_generation") == 1
    assert served.health() == 200
    again = served.tmp / "after-bad.pcap"
    assert simulate(served.pair, SAMPLE, again)["returned"] > 0
    assert _payload_has(again, CDN)               # still allowed: the old policy runs


def test_sighup_good_policy_rejudges_flows(served: Served) -> None:
    served.policy.write_text(POLICY.read_text().replace(" cdn.example.com,", ""))
    served.signal(signal.SIGHUP)
    _wait_log(served, "policy reloaded: generation 2")
    end = time.monotonic() + 5
    while total(served.metrics(), "egressd_worker_policy_generation") != 2:
        assert time.monotonic() < end, served.text()
        time.sleep(0.3)           # an idle worker looks between receive timeouts
    before = total(served.metrics(), "egressd_flows_active")
    after = served.tmp / "after-good.pcap"
    assert simulate(served.pair, SAMPLE, after)["returned"] > 0
    assert not _payload_has(after, CDN)           # the same flows, judged again: denied now
    m = served.metrics()
    assert total(m, "egressd_policy_generation") == 2
    assert total(m, "egressd_flows_active") >= before > 0   # flows kept across the reload


def test_sigterm_drains_then_exits_zero(served: Served) -> None:
    served.signal(signal.SIGTERM)
    t0 = time.monotonic()
    served.wait_health(503, timeout=5)
    assert time.monotonic() - t0 < 1.5 and served.proc.poll() is None   # still serving, 503
    assert served.proc.wait(30) == 0
    log = served.text()
    assert "draining" in log and "worker 0: stopped" in log and "killed" not in log
