"""The CLI as a user meets it: exit codes, one-line errors, outputs only on success."""
from __future__ import annotations

import json
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import SAMPLE, egressd
from egressd import __version__
from helpers_pcap import Record, dpkt_records, pcap_bytes

STATS_KEYS = {"packets_in", "bytes_in", "packets_forwarded", "packets_dropped", "drops",
              "drops_by_stage", "outputs", "elapsed_s"}


def sample_records(n: int = 6) -> list[Record]:
    return dpkt_records(SAMPLE)[:n]


def assert_bad_input(res: subprocess.CompletedProcess, names: str | Path) -> None:
    """Exit 2 and exactly one `egressd: error:` line that names the culprit."""
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("egressd: error: ") and str(names) in lines[0], lines[0]


def _write(name: str, content: bytes) -> Callable[[Path], tuple[Path, list[str]]]:
    """Case builder: write IN as `name` with `content`, replay it to OUT in the same folder."""
    def build(d: Path) -> tuple[Path, list[str]]:
        (d / name).write_bytes(content)
        return d / name, [str(d / name), "--out", str(d / "out.pcap")]
    return build


def _corrupt_record() -> bytes:
    good = pcap_bytes(sample_records())
    return good + struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 60) + bytes(60)


def _flag(flag: str, rel: str) -> Callable[[Path], tuple[str, list[str]]]:
    """Case builder: replay the sample with `flag` pointing at tmp/`rel`; the error
    must name the flag and its value."""
    def build(d: Path) -> tuple[str, list[str]]:
        out = [] if flag == "--out" else ["--out", str(d / "o.pcap")]
        return f"{flag} {d / rel}", [str(SAMPLE), *out, flag, str(d / rel)]
    return build


BAD_INPUTS: dict[str, Callable[[Path], tuple[str | Path, list[str]]]] = {
    "missing-input": lambda d: (d / "nope.pcap", [str(d / "nope.pcap"), "--out", str(d / "out.pcap")]),
    "empty-file": _write("empty.pcap", b""),
    "text-file": _write("notes.txt", b"this is not a capture\n" * 4),
    "truncated-header": _write("short.pcap", pcap_bytes([])[:10]),
    "linktype-105": _write("wifi.pcap", pcap_bytes(sample_records(), linktype=105)),
    "corrupt-record-length": _write("corrupt.pcap", _corrupt_record()),
    "out-missing-dir": _flag("--out", "no/such/dir/o.pcap"),
    "out-is-input": lambda d: (f"--out {d / 'in.pcap'}", [str(d / "in.pcap"), "--out", str(d / "in.pcap")]),
    "stats-missing-dir": _flag("--stats", "gone/s.json"),
    "dropped-missing-dir": _flag("--dropped", "gone/d.pcap"),
    "policy-missing": _flag("--policy", "policy.yaml"),
    "policy-is-directory": _flag("--policy", "."),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, case: str) -> None:
    if case == "out-is-input":
        (tmp_path / "in.pcap").write_bytes(SAMPLE.read_bytes())
    culprit, args = BAD_INPUTS[case](tmp_path)
    before = sorted(tmp_path.rglob("*"))
    res = egressd("replay", *args, "--no-progress")
    assert_bad_input(res, culprit)
    assert sorted(tmp_path.rglob("*")) == before, "a failed run writes nothing (no OUT, no .part)"
    if case == "out-is-input":
        assert (tmp_path / "in.pcap").read_bytes() == SAMPLE.read_bytes()


def test_failure_mid_capture_leaves_no_outputs(tmp_path: Path) -> None:
    """Good records are processed (and written to .part files) before the corrupt one."""
    src = tmp_path / "in.pcap"
    src.write_bytes(_corrupt_record())
    res = egressd("replay", src, "--out", tmp_path / "out.pcap", "--dropped", tmp_path / "d.pcap",
                  "--stats", tmp_path / "s.json", "--no-progress")
    assert_bad_input(res, src)
    assert f"at byte {len(pcap_bytes(sample_records()))}" in res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["in.pcap"]


def test_truncated_last_record_warns_and_counts(tmp_path: Path) -> None:
    recs = sample_records()
    src = tmp_path / "cut.pcap"
    src.write_bytes(pcap_bytes(recs)[:-10])
    stats = tmp_path / "s.json"
    res = egressd("replay", src, "--out", tmp_path / "out.pcap", "--stats", stats, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert re.search(r"warning: .*truncated_final_record 1", res.stderr)
    s = json.loads(stats.read_text())
    assert s["input"]["records_skipped"] == {"truncated_final_record": 1}
    assert s["packets_in"] == len(recs) - 1
    assert len(dpkt_records(tmp_path / "out.pcap")) == s["packets_forwarded"] == len(recs) - 1


def test_stats_and_quiet_summary(tmp_path: Path) -> None:
    out, stats = tmp_path / "out.pcap", tmp_path / "stats.json"
    res = egressd("replay", SAMPLE, "--out", out, "--stats", stats, "--no-progress")
    assert res.returncode == 0, res.stderr
    s = json.loads(stats.read_text())
    assert STATS_KEYS <= s.keys()
    recs = dpkt_records(SAMPLE)
    assert (s["packets_in"], s["bytes_in"]) == (len(recs), sum(len(r.frame) for r in recs))
    assert s["packets_in"] == s["packets_forwarded"] + s["packets_dropped"]
    assert sum(s["drops"].values()) == sum(s["drops_by_stage"].values()) == s["packets_dropped"]
    assert s["outputs"]["forwarded"] == str(out) and s["outputs"]["dropped"] is None
    assert isinstance(s["elapsed_s"], float) and s["elapsed_s"] >= 0
    # --no-progress: nothing but the summary, all on stderr
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert re.fullmatch(rf"egressd: {len(recs)} packets \(\d+ bytes\) in [\d.]+ s: forwarded "
                        rf"{s['packets_forwarded']}, dropped {s['packets_dropped']}", lines[0])
    assert re.fullmatch(rf"  forwarded +{s['packets_forwarded']} +{s['bytes_forwarded']} +{out}",
                        lines[lines.index("traffic:") + 3])
    assert re.fullmatch(rf"  dropped +{s['packets_dropped']} +{s['bytes_dropped']}", lines[lines.index("traffic:") + 4])
    assert [line for line in lines if not line.startswith("  ")] == [lines[0], "traffic:", "flows:"]


def test_out_dev_null(tmp_path: Path) -> None:
    res = egressd("replay", SAMPLE, "--out", "/dev/null", "--dropped", "/dev/null", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert Path("/dev/null").is_char_device()
    assert not Path("/dev/null.part").exists()


def test_version() -> None:
    res = egressd("--version")
    assert (res.returncode, res.stdout.strip()) == (0, f"egressd {__version__}")


@pytest.mark.parametrize("args,mentions", [([], "COMMAND"), (["replay", str(SAMPLE)], "--out")],
                         ids=["no-subcommand", "missing-out"])
def test_usage_errors(args: list[str], mentions: str) -> None:
    res = egressd(*args)
    assert res.returncode == 2
    assert "usage: egressd" in res.stderr and mentions in res.stderr
    assert "Traceback" not in res.stderr


def test_fragments_flag_sets_the_fragment_default_action(tmp_path):
    from scapy.layers.inet import IP, UDP, fragment

    from gwlb import wrap, write_pcap

    datagram = IP(src="10.1.0.1", dst="198.51.100.7", id=9) / UDP(sport=5000, dport=53) / (b"x" * 3000)
    frags = fragment(datagram, 1000)
    capture = write_pcap(tmp_path / "frags.pcap", [wrap(bytes(f)) for f in frags])
    seen = {}
    for mode in ("reassemble", "pass", "drop"):
        res = egressd("replay", capture, "--out", tmp_path / "o.pcap", "--stats", tmp_path / "s.json",
                      "--fragments", mode)
        assert res.returncode == 0, res.stderr
        seen[mode] = json.loads((tmp_path / "s.json").read_text())
    assert seen["reassemble"]["fragments"]["reassembled"] == 1
    assert seen["reassemble"]["packets_forwarded"] == len(frags) > 1
    assert seen["pass"]["fragments"]["reassembled"] == 0
    assert seen["pass"]["packets_forwarded"] == len(frags)
    assert seen["drop"]["drops"] == {"frag_policy_drop": len(frags)}
    assert seen["drop"]["packets_forwarded"] == 0
    bad = egressd("replay", capture, "--out", tmp_path / "o.pcap", "--fragments", "maybe")
    assert bad.returncode == 2


def test_flow_capacity_must_be_a_power_of_two(tmp_path):
    res = egressd("replay", SAMPLE, "--out", tmp_path / "o.pcap", "--flow-capacity", "1000")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "egressd: error: --flow-capacity: flow table capacity must be a power of two between "
        "32 and 1073741824, not 1000"]
    ok = egressd("replay", SAMPLE, "--out", tmp_path / "o.pcap", "--flow-capacity", "1024",
                 "--stats", tmp_path / "s.json")
    assert ok.returncode == 0
    assert json.loads((tmp_path / "s.json").read_text())["flows"]["created"] == 11
