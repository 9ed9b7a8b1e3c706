"""`egressd gen`: the command line of the traffic generator (bench/gen_cli.py).

tests/test_gen.py checks the generator's traffic with tshark, kind by kind and size by
size; here: that the flags reach generate() one for one (the same bytes as the library
call), that the summary tells what the file holds, that the built-in names list makes
traffic tshark reads cleanly, that bad input is one `egressd: error:` line naming the
flag or file (exit 2) and leaves no file behind, and the progress reports.
"""
from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from conftest import egressd
from test_cli import assert_bad_input

from egressd import cli
from egressd.bench import gen
from egressd.bench.hostnames import EGRESS_NAMES


def gen_in_process(capsys, *args: object) -> subprocess.CompletedProcess:
    """`egressd gen ARGS` in this interpreter (the kernels are loaded once per run)."""
    argv = ["gen", *map(str, args)]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def frames(path: Path) -> list[bytes]:
    with open(path, "rb") as f:
        return [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]


def test_summary_tells_what_the_file_holds_and_tshark_reads_it(tmp_path: Path, tshark) -> None:
    """As a user runs it (a fresh interpreter, default names and mix): the headline and
    table count what dpkt finds in the file; tshark finds nothing malformed and reads
    only names of the built-in list, most kinds of them."""
    out = tmp_path / "default.pcap"
    res = egressd("gen", out, "--flows", 400, "--packets-per-flow", 8, "--seed", 3,
                  "--ipv6-share", 0.5, "--split-client-hello-share", 0.5)
    assert res.returncode == 0, res.stderr
    got = frames(out)
    head = re.match(r"egressd gen: (\d+) packets \((\d+) bytes of frames\), (\d+) flows in "
                    r"[\d.]+ s \((\d+) packets/s\) -> (.+)$", res.stderr.splitlines()[0])
    assert head, res.stderr
    assert (int(head[1]), int(head[2]), int(head[3]), head[5]) == (
        len(got), sum(map(len, got)), 400, str(out))
    rows = {m[1]: (int(m[2]), int(m[3])) for m in
            re.finditer(r"^  (\w+) +(\d+) +(\d+)$", res.stderr, re.MULTILINE)}
    assert rows.pop("total") == (400, len(got))
    assert set(rows) <= set(gen.KINDS) and len(rows) >= 5
    assert sum(f for f, _ in rows.values()) == 400 and sum(p for _, p in rows.values()) == len(got)

    report = subprocess.run([tshark, "-r", str(out), "-q", "-o", "tcp.check_checksum:TRUE",
                             "-o", "udp.check_checksum:TRUE", "-z", "expert"],
                            capture_output=True, text=True, check=True, timeout=120).stdout
    assert "Errors (" not in report and "Malformed" not in report, report
    names = subprocess.run([tshark, "-r", str(out), "-2", "-T", "fields", "-E", "occurrence=f",
                            "-e", "tls.handshake.extensions_server_name", "-e", "http.host",
                            "-e", "dns.qry.name"], capture_output=True, text=True, check=True,
                           timeout=120).stdout.split()
    assert set(names) <= set(EGRESS_NAMES) and len(set(names)) > 50


def test_flags_are_generate_arguments_one_for_one(tmp_path: Path, capsys) -> None:
    """Every flag set away from its default: the same bytes as generate() with the same
    arguments; the seed alone changes them."""
    names = tmp_path / "names.txt"
    names.write_text("# allowed\npkgs.example.com\n\nmirror.example.net  # trailing comment\n"
                     "x.co\n")
    args = ["--flows", 150, "--packets-per-flow", 12, "--mix", "tls=2, http=1,quic=1,icmp=0.5",
            "--names", names, "--ipv6-share", 0.5, "--sizes", "jumbo", "--endpoints", 7,
            "--split-client-hello-share", 0.5, "--out-of-order-share", 0.5, "--seed", 9]
    res = gen_in_process(capsys, tmp_path / "cli.pcap", *args)
    assert res.returncode == 0, res.stderr
    counts = gen.generate(tmp_path / "lib.pcap", flows=150, packets_per_flow=12,
                          mix={"tls": 2, "http": 1, "quic": 1, "icmp": 0.5},
                          names=["pkgs.example.com", "mirror.example.net", "x.co"], ipv6_share=0.5,
                          sizes="jumbo", endpoints=7, split_client_hello_share=0.5,
                          out_of_order_share=0.5, seed=9)
    assert (tmp_path / "cli.pcap").read_bytes() == (tmp_path / "lib.pcap").read_bytes()
    assert f"egressd gen: {counts['total']['packets']} packets" in res.stderr
    line = {m[1]: int(m[2]) for m in re.finditer(r"^ +(IPv6|split ClientHellos|out of order) +(\d+)$",
                                                 res.stderr, re.MULTILINE)}
    assert line == {"IPv6": counts["ipv6_flows"], "split ClientHellos": counts["split_client_hellos"],
                    "out of order": counts["out_of_order"]}
    assert min(line.values()) > 0 and counts["dns"]["flows"] == counts["udp"]["flows"] == 0
    # the seven endpoints and a cookie per flow, as the plan drew them
    got = frames(tmp_path / "cli.pcap")
    endpoints = Counter(f[54:62] for f in got)         # GENEVE option 1, endpoint id
    cookies = {(f[34:36], f[78:82]) for f in got}      # GWLB's UDP source port, option 3
    assert len(endpoints) == 7 and len(cookies) == 150

    again = gen_in_process(capsys, tmp_path / "again.pcap", *args)
    other = gen_in_process(capsys, tmp_path / "other.pcap", *args[:-1], 10)
    assert again.returncode == other.returncode == 0
    assert (tmp_path / "again.pcap").read_bytes() == (tmp_path / "cli.pcap").read_bytes()
    assert (tmp_path / "other.pcap").read_bytes() != (tmp_path / "cli.pcap").read_bytes()


def _names(text: bytes):
    def build(d: Path) -> tuple[str, list[str]]:
        (d / "names.txt").write_bytes(text)
        return f"--names {d / 'names.txt'}", ["--names", str(d / "names.txt")]
    return build


BAD = {
    "mix-unknown-kind": lambda d: ("--mix tls=1,smtp=2: unknown kind 'smtp'", ["--mix", "tls=1,smtp=2"]),
    "mix-bad-weight": lambda d: ("--mix tls=lots: the weight of tls", ["--mix", "tls=lots"]),
    "mix-negative": lambda d: ("--mix dns=-1", ["--mix", "dns=-1"]),
    "mix-no-weight": lambda d: ("--mix tls", ["--mix", "tls"]),
    "mix-all-zero": lambda d: ("--mix tls=0,dns=0: non-negative weights", ["--mix", "tls=0,dns=0"]),
    "ipv6-share": lambda d: ("--ipv6-share 1.5: a share between 0 and 1", ["--ipv6-share", "1.5"]),
    "split-share": lambda d: ("--split-client-hello-share -0.1", ["--split-client-hello-share", "-0.1"]),
    "ooo-share": lambda d: ("--out-of-order-share nan", ["--out-of-order-share", "nan"]),
    "flows-zero": lambda d: ("--flows 0: 1 to", ["--flows", "0"]),
    "flows-negative": lambda d: ("--flows -5: 1 to", ["--flows", "-5"]),
    "packets-per-flow": lambda d: ("--packets-per-flow 0: 1 to 50000", ["--packets-per-flow", "0"]),
    "endpoints": lambda d: ("--endpoints 256: 1 to 255", ["--endpoints", "256"]),
    "names-missing": lambda d: (f"--names {d / 'nope.txt'}: cannot read: No such file",
                                ["--names", str(d / "nope.txt")]),
    "names-bad-line": _names(b"good.example\n# fine\n\nbad_name.example\n"),
    "names-address": _names(b"192.0.2.1\n"),
    "names-empty": _names(b"# nothing\n\n"),
    "names-not-ascii": _names("b\u00fccher.example\n".encode()),
    "out-no-directory": lambda d: (f"OUT.pcap {d / 'no' / 'out.pcap'}: directory",
                                   [str(d / "no" / "out.pcap")]),
    "out-is-a-directory": lambda d: (f"OUT.pcap {d}: cannot write: Is a directory", [str(d)]),
}
MENTIONS = {"names-bad-line": "line 4: not a host name", "names-address": "line 1: not a host name",
            "names-empty": "no names", "names-not-ascii": "not ASCII"}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_no_file(case: str, tmp_path: Path, capsys) -> None:
    culprit, args = BAD[case](tmp_path)
    if not args[0].startswith("--"):
        out, args = args[0], args[1:]
    else:
        out = str(tmp_path / "out.pcap")
    res = gen_in_process(capsys, out, "--flows", 5, *args)
    assert_bad_input(res, culprit)
    assert MENTIONS.get(case, "") in res.stderr
    assert not (tmp_path / "out.pcap").exists()


def test_unknown_size_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["gen", "x.pcap", "--sizes", "9000"])
    assert e.value.code == 2 and "--sizes" in capsys.readouterr().err


def test_progress_counts_every_packet_in_order(tmp_path: Path, capsys, monkeypatch) -> None:
    """generate() reports packets written chunk by chunk, up to the total; `--progress`
    draws it and changes no byte."""
    monkeypatch.setattr(gen, "CHUNK_BYTES", 1 << 16)      # many chunks from a small capture
    seen: list[tuple[int, int]] = []
    counts = gen.generate(tmp_path / "p.pcap", flows=300, packets_per_flow=10, seed=4,
                          progress=lambda done, total: seen.append((done, total)))
    n = counts["total"]["packets"]
    assert len(seen) > 5 and {t for _, t in seen} == {n}
    assert [d for d, _ in seen] == sorted({d for d, _ in seen}) and seen[-1][0] == n
    res = gen_in_process(capsys, tmp_path / "bar.pcap", "--flows", 300, "--seed", 4, "--progress")
    assert res.returncode == 0, res.stderr
    gen.generate(tmp_path / "plain.pcap", flows=300, packets_per_flow=10, seed=4,
                 names=list(EGRESS_NAMES))
    assert (tmp_path / "bar.pcap").read_bytes() == (tmp_path / "plain.pcap").read_bytes()
