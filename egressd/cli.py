"""Command line: `egressd replay ...`, `egressd policy check ...`.

Exit codes: 0 ok, 2 bad input (usage, unreadable capture or policy, unwritable
output), 1 internal error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from egressd import __version__

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """User-facing error: the message names the file or flag and the reason."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="egressd",
        description="Egress inspection engine for AWS Gateway Load Balancer (GENEVE) traffic.")
    p.add_argument("--version", action="version", version=f"egressd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("replay", help="replay a pcap/pcapng of GWLB traffic through the pipeline",
                       description="Decapsulate GWLB GENEVE traffic from a capture, decide every "
                                   "packet, and write the packets a GWLB target returns.")
    r.add_argument("input", metavar="IN", help="capture to replay (pcap or pcapng)")
    r.add_argument("--out", required=True, metavar="OUT.pcap",
                   help="where returned (forwarded) packets are written, re-encapsulated")
    r.add_argument("--policy", action="append", default=[], metavar="FILE",
                   help="policy file (repeatable); none means allow all")
    r.add_argument("--dropped", metavar="DROP.pcap", help="also write dropped packets, as received")
    r.add_argument("--stats", metavar="STATS.json", help="write run statistics as JSON")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on when stderr is a terminal)")
    r.add_argument("--accept-non-gwlb", action="store_true",
                   help="accept GENEVE packets without GWLB's endpoint/attachment/cookie options")
    r.add_argument("--flow-capacity", type=int, default=1 << 20, metavar="N",
                   help="flow table slots, a power of two (default 1048576, about 138 MB)")
    r.add_argument("--fragments", choices=("reassemble", "pass", "drop"), default=None,
                   help="inner IP fragments: reassemble for inspection, pass uninspected, or "
                        "drop (AWS Network Firewall's stateless default action for fragmented "
                        "packets: forward to stateful, pass, drop); default: the policy's, "
                        "else reassemble")

    pol = sub.add_parser("policy", help="work with policy files")
    psub = pol.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    chk = psub.add_parser("check", help="validate policy files and print what they compile to",
                          description="Load the files as `replay --policy` would (merged in the "
                                      "order given), compile them, and print a summary; exit 2 "
                                      "with the file, line or field, and reason on an error.")
    chk.add_argument("files", nargs="+", metavar="FILE",
                     help="YAML policy, AWS Network Firewall JSON, Suricata rules or domain list")
    return p


def _load_policy(paths: list[str], flag: str = ""):
    """Load, merge and compile policy files; BadInput names the file (after `flag`, the
    option that gave it), the line or field, and the reason."""
    from egressd.rules.compile import compile_policy
    from egressd.rules.load import load_policies
    from egressd.rules.policy import PolicyError

    try:
        merged = load_policies([Path(p) for p in paths])
        return merged, compile_policy(merged)
    except PolicyError as e:
        raise BadInput(f"{flag} {e}" if flag else str(e)) from None


def _policy_check(args: argparse.Namespace) -> int:
    from egressd.rules.load import describe

    merged, compiled = _load_policy(args.files)
    lines = describe(merged)
    c = compiled.summary
    lines.append(f"compiled: {sum(c['rules'].values())} rule rows, {c['domain_sets']} domain "
                 f"sets ({c['patterns']} patterns), {c['address_ranges']} address ranges, "
                 f"{c['port_ranges']} port ranges; fragments: {compiled.frag_mode.name.lower()}")
    print("\n".join(lines))
    return EXIT_OK


def _check_output(path: str, flag: str, inp: Path) -> None:
    out = Path(path)
    if out.exists() and inp.exists() and out.resolve() == inp.resolve():
        raise BadInput(f"{flag} {path}: would overwrite the input capture")
    if not out.parent.is_dir():
        raise BadInput(f"{flag} {path}: directory {out.parent} does not exist")


def _first_run_notice() -> None:
    """On a terminal, say so when the kernels have never been compiled here: that
    takes a while (like the progress bar, nothing of the kind when output is piped)."""
    cache = os.environ.get("NUMBA_CACHE_DIR")
    if sys.stderr.isatty() and cache and not any(Path(cache).rglob("*.nbi")):
        print("egressd: compiling the packet kernels for this machine (first run only, "
              "about half a minute)", file=sys.stderr)


def _replay(args: argparse.Namespace) -> int:
    from egressd.engine.flows import FlowConfig
    from egressd.engine.frag import FragConfig, FragMode
    from egressd.engine.pcapio import CaptureError
    from egressd.engine.pipeline import replay

    inp = Path(args.input)
    for flag, path in (("--out", args.out), ("--dropped", args.dropped), ("--stats", args.stats)):
        if path:
            _check_output(path, flag, inp)
    policy = _load_policy(args.policy, "--policy")[1] if args.policy else None
    if args.fragments:
        frag_mode = FragMode[args.fragments.upper()]
    else:
        frag_mode = policy.frag_mode if policy else FragMode.REASSEMBLE
    try:
        flows = FlowConfig(capacity=args.flow_capacity)
    except ValueError as e:
        raise BadInput(f"--flow-capacity: {e}") from None
    show = sys.stderr.isatty() if args.progress is None else args.progress
    _first_run_notice()

    def run(progress=None):
        return replay(inp, args.out, args.dropped, require_gwlb=not args.accept_non_gwlb,
                      frag=FragConfig(mode=frag_mode), flows=flows, policy=policy,
                      progress=progress)

    try:
        stats = _with_progress(inp, run) if show else run()
    except CaptureError as e:
        raise BadInput(str(e)) from None
    report = stats.to_dict()
    if args.stats:
        Path(args.stats).write_text(json.dumps(report, indent=2) + "\n")
    _summary(report)
    return EXIT_OK


def _with_progress(inp: Path, run: Callable[[Callable[[int], None]], object]):
    """run(progress) under a progress bar of the bytes of `inp` read."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    size = inp.stat().st_size if inp.is_file() else None
    columns = (TextColumn("replay"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("replay", total=size)
        return run(lambda done: bar.update(task, completed=done))


def _summary(report: dict) -> None:
    drops = ", ".join(f"{k} {v}" for k, v in sorted(report["drops"].items(), key=lambda kv: -kv[1]))
    lines = [
        f"egressd: {report['packets_in']} packets ({report['bytes_in']} bytes) in "
        f"{report['elapsed_s']:.3f} s",
        f"  forwarded {report['packets_forwarded']} -> {report['outputs']['forwarded']}",
        f"  dropped   {report['packets_dropped']}" + (f" ({drops})" if drops else "")
        + (f" -> {report['outputs']['dropped']}" if report['outputs']['dropped'] else ""),
    ]
    pol = report.get("policy")
    if pol:
        top = pol["rule_hits"][0] if pol["rule_hits"] else None
        lines.append(f"  policy: {pol['flows_passed']} flows passed, {pol['flows_dropped']} dropped, "
                     f"{pol['flows_judged_without_name']} judged without a name, {pol['alerts']} alerts"
                     + (f"; most hits: {top['layer']} {top['group']} {top['rule']} ({top['hits']})"
                        if top else ""))
    skipped = report["input"].get("records_skipped")
    if skipped:
        lines.append("  warning: capture ends inside a record; skipped: "
                     + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    print("\n".join(lines), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _policy_check(args) if args.command == "policy" else _replay(args)
    except BadInput as e:
        print(f"egressd: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("egressd: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if os.environ.get("EGRESSD_DEBUG"):
            raise
        print(f"egressd: internal error: {type(e).__name__}: {e} (set EGRESSD_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
