"""Command line: `egressd replay`, `egressd policy check|explain`; `serve`, `gwlb-sim`,
`gen` and `bench` register themselves from their modules (SUBCOMMANDS).

Exit codes: 0 ok, 2 bad input (usage, unreadable capture or policy, unwritable
output), 1 internal error.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from egressd import __version__

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


# Modules that add a subcommand: `register(sub)` adds its parser and sets `run`, a
# function of the parsed arguments returning the exit code.
SUBCOMMANDS: tuple[str, ...] = ("egressd.bench.gen_cli", "egressd.serve", "egressd.geneve.gwlbsim",
                                "egressd.bench.harness")


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
    r.add_argument("--eve", metavar="EVE.json",
                   help="write EVE JSON lines as AWS Network Firewall logs them (alert, flow, "
                        "tls, http, dns events with the GWLB endpoint, attachment and cookie)")
    r.add_argument("--eve-types", default="alert,flow,tls,http,dns", metavar="TYPES",
                   help="comma-separated EVE event types to write (default: all of "
                        "alert,flow,tls,http,dns; e.g. alert for alerts only)")
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
    exp = psub.add_parser("explain", help="show which layer and rule decide a flow, and why",
                          description="Build the packets of one flow (TCP handshake, the TLS "
                                      "ClientHello / HTTP request / DNS query / QUIC Initial, a "
                                      "reply), wrap them as GWLB does, run them through the "
                                      "pipeline with the policy files (merged as `replay --policy` "
                                      "merges them) and print, per packet, the verdict, the "
                                      "deciding layer and rule and the reason; then why.")
    exp.add_argument("files", nargs="+", metavar="FILE",
                     help="YAML policy, AWS Network Firewall JSON, Suricata rules or domain list")
    exp.add_argument("--flow", required=True, metavar="FLOW",
                     help='e.g. "tcp 10.0.0.5:40000 -> 203.0.113.7:443 sni=example.com", '
                          '"http A:P -> B:80 host=NAME", "udp A:P -> B:53 dns=NAME [qtype=AAAA]", '
                          '"quic A:P -> B:443 sni=NAME", "icmp A -> B"; IPv6 as [2001:db8::1]:443')
    for module in SUBCOMMANDS:
        importlib.import_module(module).register(sub)
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


def _policy_explain(args: argparse.Namespace) -> int:
    from egressd import flowspec
    from egressd.rules.explain import explain

    try:
        spec = flowspec.parse_flow(args.flow)
    except flowspec.FlowSpecError as e:
        raise BadInput(f"--flow {args.flow!r}: {e}") from None
    merged, compiled = _load_policy(args.files)
    packets = flowspec.build_packets(spec)
    _first_run_notice()
    steps, created = flowspec.decide(packets, compiled)
    defaults = ", ".join(merged.stateful_defaults or ()) or "none"
    head = [f"flow    {' '.join(args.flow.split())}  ({spec.describe()}, {len(packets)} packets)",
            f"policy  {', '.join(args.files)}  ({merged.rule_order}; stateful default actions: "
            f"{defaults})",
            f"wire    each packet in GENEVE from GWLB {flowspec.GWLB_IP}: endpoint "
            f"{flowspec.ENDPOINT_ID:#018x}, attachment {flowspec.ATTACHMENT_ID:#018x}, flow cookie "
            f"{flowspec.FLOW_COOKIE:#010x}", ""]
    print("\n".join(head + explain(merged, compiled, steps, created,
                                   spec.sni or spec.host or spec.dns)))
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
    for flag, path in (("--out", args.out), ("--dropped", args.dropped), ("--stats", args.stats),
                       ("--eve", args.eve)):
        if path:
            _check_output(path, flag, inp)
    from egressd.engine.eve import EVE_TYPES
    eve_types = frozenset(t.strip() for t in args.eve_types.split(",") if t.strip())
    if not eve_types or eve_types - EVE_TYPES:
        raise BadInput(f"--eve-types {args.eve_types}: choose from {','.join(sorted(EVE_TYPES))}")
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
                      eve=args.eve, eve_types=eve_types, progress=progress)

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


Table = tuple[str, list[str], list[list[object]]]     # title, column headings, rows
TOP_SHOWN = 10           # rules in the summary's top-rules table (the stats JSON has more)
ORIGIN_WIDTH = 60        # characters of a rule's origin shown in that table


def _summary_tables(report: dict) -> list[Table]:
    """The end-of-run summary: traffic, drops by layer and reason, packets created,
    flows, top rules.  Numbers are ints, the rest text."""
    from egressd.engine.pipeline import layer_of
    from egressd.engine.reasons import NAMES

    out = report["outputs"]
    traffic: list[list[object]] = [
        ["in", report["packets_in"], report["bytes_in"], report["input"]["path"]],
        ["forwarded", report["packets_forwarded"], report["bytes_forwarded"], out["forwarded"]],
        ["dropped", report["packets_dropped"], report["bytes_dropped"],
         (out["dropped"] or "") + (f" ({out['dropped_not_written']} not written)"
                                   if out["dropped_not_written"] else "")]]
    pol = report.get("policy") or {}
    if pol:
        # engine.actions counters: packets created by kind, and a breakdown (such as
        # the rows that asked for a packet but got none) whose non-zero entries are shown
        created = pol.get("created", {})
        traffic.append(["created", sum(v for v in created.values() if isinstance(v, int)), "",
                        "answers egressd sent (in forwarded)"])
        for k, v in created.items():
            if isinstance(v, dict):
                traffic += [[f"  {k.replace('_', ' ')}: {kk}", vv, "", ""] for kk, vv in v.items() if vv]
            elif v:
                traffic.append([f"  {k}", v, "", ""])
    tables: list[Table] = [("traffic", ["", "packets", "bytes", "file"], traffic)]

    by_layer: dict[str, list[tuple[str, int]]] = {}
    for name, n in report["drops"].items():
        by_layer.setdefault(layer_of(NAMES.index(name)), []).append((name, n))
    drops: list[list[object]] = []
    for layer, n in sorted(report["drops_by_layer"].items(), key=lambda kv: -kv[1]):
        for k, (reason, c) in enumerate(sorted(by_layer[layer], key=lambda rc: -rc[1])):
            drops.append([layer, n, reason, c] if k == 0 else ["", "", reason, c])
    if drops:
        tables.append(("drops", ["layer", "packets", "reason", "packets"], drops))

    f = report["flows"]
    flows: list[list[object]] = [
        ["seen", f["created"]], ["timed out", f["timed_out"]],
        ["evicted", f["evicted_closed"] + f["evicted_embryonic"] + f["evicted_idle"]]]
    if pol:
        flows += [["passed by a rule", pol["flows_passed"]], ["dropped by a rule", pol["flows_dropped"]],
                  ["judged without a name", pol["flows_judged_without_name"]],
                  ["alerts (packets)", pol["alerts"]]]
    tables.append(("flows", ["", "count"], flows))

    top = report.get("top_rules") or []
    if top:
        rows: list[list[object]] = []
        for r in top[:TOP_SHOWN]:
            rows.append([r["layer"], r["group"] or "-", r["rule"], r["hits"], _short_rule(r["text"])])
        tables.append(("top rules", ["layer", "group", "rule", "hits", "origin"], rows))
    return tables


_SURICATA_RULE = re.compile(r"(\w+)\s+(\w+)\s.*?\((.*)\)\s*$")
_SURICATA_OPTION = re.compile(r'\b(content|msg):\s*("(?:[^"\\]|\\.)*")')


def _short_rule(text: str) -> str:
    """A rule's text in at most ORIGIN_WIDTH characters, keeping what tells rules apart:
    for a Suricata rule its action, protocol and contents (else its msg)."""
    m = _SURICATA_RULE.match(text)
    if m:
        opts = _SURICATA_OPTION.findall(m[3])
        keep = ([f"{k}:{v}" for k, v in opts if k == "content"]
                or [f"{k}:{v}" for k, v in opts if k == "msg"])
        text = " ".join([m[1], m[2], *keep])
    text = " ".join(text.split())
    return text if len(text) <= ORIGIN_WIDTH else text[:ORIGIN_WIDTH - 3] + "..."


def _rich_tables(tables: list[Table]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(file=sys.stderr, highlight=False)
    for title, heads, rows in tables:
        # rounded: its lines are not the heavy ones the progress bar draws with
        t = RichTable(title=title, title_justify="left", title_style="bold", box=box.ROUNDED)
        full = [max(len(str(c)) for c in [h, *(r[k] for r in rows)]) for k, h in enumerate(heads)]
        for k, h in enumerate(heads):
            numeric = any(isinstance(r[k], int) for r in rows)
            # on a narrow terminal only the last column (a file name, a rule's text) is cut:
            # what is left of the width after the others, their padding and the lines
            room = console.width - sum(full[:-1]) - 3 * len(heads) - 1
            t.add_column(h, justify="right" if numeric else "left", no_wrap=True, overflow="ellipsis",
                         width=max(room, 8) if k == len(heads) - 1 and full[k] > room else None)
        for r in rows:
            t.add_row(*(str(v) for v in r))
        console.print(t)


def _plain_tables(tables: list[Table]) -> list[str]:
    """The tables as aligned plain text (no colour, no box drawing): what a log keeps."""
    lines = []
    for title, heads, rows in tables:
        cells = [heads] + [[str(v) for v in r] for r in rows]
        width = [max(len(c[k]) for c in cells) for k in range(len(heads))]
        right = [any(isinstance(r[k], int) for r in rows) for k in range(len(heads))]
        lines.append(f"{title}:")
        for c in cells:
            lines.append("  " + "  ".join(v.rjust(w) if r else v.ljust(w)
                                          for v, w, r in zip(c, width, right)).rstrip())
    return lines


def _summary(report: dict) -> None:
    """A headline, the summary tables (rich on a terminal, plain text otherwise) and any
    warning, on stderr."""
    lines = [f"egressd: {report['packets_in']} packets ({report['bytes_in']} bytes) in "
             f"{report['elapsed_s']:.3f} s: forwarded {report['packets_forwarded']}, "
             f"dropped {report['packets_dropped']}"]
    tables = _summary_tables(report)
    skipped = report["input"].get("records_skipped")
    warning = ("warning: capture ends inside a record; skipped: "
               + ", ".join(f"{k} {v}" for k, v in skipped.items())) if skipped else None
    terminal = sys.stderr.isatty()
    if terminal:
        print(lines[0], file=sys.stderr)
        _rich_tables(tables)
        lines = []
    else:
        lines += _plain_tables(tables)
    if warning:
        lines.append(warning)
    if lines:
        print("\n".join(lines), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if hasattr(args, "run"):
            return args.run(args)
        if args.command == "policy":
            return _policy_explain(args) if args.policy_command == "explain" else _policy_check(args)
        return _replay(args)
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
