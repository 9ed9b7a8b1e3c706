"""`egressd bench --quick` works and its output holds together; never a speed.

One CI-sized run (tiny captures, one round, every baseline: Suricata, dpkt, scapy,
ndpiReader) as a user runs it, in a subprocess; then its result document is validated
against bench/result.schema.json, every contestant must have run on real packets, the
Python pipelines must have forwarded what egressd forwarded on the same packets (the
dpkt one byte for byte), and the plot must be a PNG.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from conftest import REPO

from egressd.cli import main

CONTESTANTS = {"egressd file-to-file", "egressd in-memory", "plain copy", "suricata single",
               "suricata autofp", "dpkt pipeline", "scapy pipeline", "ndpiReader"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("bench")
    out, png = work / "results.json", work / "results.png"
    res = subprocess.run([sys.executable, "-m", "egressd", "bench", "--quick", "--out", str(out),
                          "--plot", str(png), "--dir", str(work)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(out.read_text()), png, res


def test_result_validates_against_the_schema(quick) -> None:
    doc, _, _ = quick
    schema = json.loads((REPO / "bench" / "result.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(doc)
    assert doc["quick"] is True and doc["machine"]["cores"] >= 1


def test_every_contestant_ran_on_packets(quick) -> None:
    doc, _, _ = quick
    head = [r for r in doc["rows"] if r["headline"]]
    assert {r["contestant"] for r in head} == CONTESTANTS
    for r in doc["rows"]:
        assert r["status"] == "ok", r
        assert r["packets"] > 0 and r["seconds"] > 0, r
    cell = next(c for c in doc["cells"] if c["headline"])
    # Suricata and ndpiReader counted the packets themselves: all of the capture's
    for r in head:
        if r["contestant"].startswith(("suricata", "ndpiReader", "egressd")):
            assert r["packets"] == cell["packets"], r
    assert cell["checks"]["ndpi"]["packets_read"] == cell["checks"]["ndpi"]["inner_packets_written"]


def test_baselines_did_egressds_work(quick) -> None:
    doc, _, _ = quick
    cell = next(c for c in doc["cells"] if c["headline"])
    e = cell["egressd"]
    # names half on the allowlist and half not: both verdicts happen
    assert e["flows_dropped"] > 0 and e["forwarded"] > 0
    assert e["in_memory_forwarded"] == e["forwarded"]
    for which in ("dpkt", "scapy"):
        check = cell["checks"][which]
        assert check["same_count"] and check["forwarded"] == check["egressd_forwarded"] > 0, check
    assert cell["checks"]["dpkt"]["same_bytes"]
    # Suricata ran the rules AWS generates: one pass rule per target and type, two drops
    suri = next(r for r in doc["rows"] if r["headline"] and r["contestant"] == "suricata single")
    assert suri["rules_loaded"] == 2 * doc["headline"]["domains"] + 2
    assert suri["dropped"] > 0


def test_report_and_plot(quick) -> None:
    doc, png, res = quick
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ndpiReader" in res.stdout and "where egressd's time goes" in res.stdout
    assert len(doc["memory"]["by_capacity"]) >= 2 and doc["jit"]["cached_s"] >= 0


@pytest.mark.parametrize("flags, message", [
    (["--flows", "ten"], "--flows ten"),
    (["--sizes", "huge"], "--sizes huge"),
    (["--baselines", "snort"], "--baselines snort"),
    (["--dir", "/nonexistent/bench"], "--dir /nonexistent/bench"),
])
def test_bad_flags_exit_2(flags: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--quick", *flags]) == 2
    assert message in capsys.readouterr().err
