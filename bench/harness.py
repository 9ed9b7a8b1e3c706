"""`egressd bench`: every stage and the whole pipeline against baselines, in one run.

    egressd bench [--quick] [--out results.json] [--plot FILE.png] [--dir WORKDIR]
                  [--sizes imix,64,jumbo] [--flows 1000,100000,1000000]
                  [--domains 10,10000,100000] [--full-grid] [--packets N] [--rounds R]
                  [--dpkt-packets N] [--scapy-packets N] [--baselines suricata,dpkt,scapy,ndpi]

Traffic is bench.gen's (the default mix: TLS, HTTP, DNS, QUIC, WireGuard, ICMP, a fifth
IPv6) with names half on the allowlist and half not, so that flows are dropped; the
policy is an AWS Network Firewall domain allowlist of N domains (TLS SNI and HTTP Host)
loaded through egressd's loader, and Suricata gets the rules AWS generates for the same
list.  A cell is (inner packet sizes, flows, domains); the default run measures the
headline cell (imix, 100 k flows, 10 k domains) and each axis around it one at a time
(7 cells); --full-grid takes every combination.  See bench/README.md for how to read
the output.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from egressd.cli import BadInput

HEADLINE = ("imix", 100_000, 10_000)
QUICK = {"sizes": ["imix"], "flows": [1000], "domains": [100], "packets": 6000,
         "rounds": 1, "dpkt_packets": 3000, "scapy_packets": 500}
DEFAULTS = {"sizes": ["64", "imix", "jumbo"], "flows": [1000, 100_000, 1_000_000],
            "domains": [10, 10_000, 100_000], "packets": 1_000_000, "rounds": 3,
            "dpkt_packets": 50_000, "scapy_packets": 2000}
BASELINES = ("suricata", "dpkt", "scapy", "ndpi")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark every stage and the pipeline against baselines",
                       description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                       epilog="Numbers mean nothing without the machine line printed with "
                              "them; never compare runs of different machines or loads.")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized: tiny captures, one round, every baseline and the plot "
                        "(under a minute; its speeds mean nothing)")
    p.add_argument("--out", metavar="RESULTS.json", help="write the result document here")
    p.add_argument("--plot", metavar="FILE.png", help="plot throughput by traffic and policy size")
    p.add_argument("--dir", metavar="WORKDIR",
                   help="where captures and outputs go (default: a temporary folder, removed)")
    p.add_argument("--sizes", metavar="LIST", help="inner sizes axis: 64, imix, jumbo (default: all)")
    p.add_argument("--flows", metavar="LIST", help="flows axis (default 1000,100000,1000000)")
    p.add_argument("--domains", metavar="LIST", help="allowlist sizes axis (default 10,10000,100000)")
    p.add_argument("--full-grid", action="store_true",
                   help="every combination of the axes, not the headline cell and one axis at a time")
    p.add_argument("--packets", type=int, metavar="N",
                   help="packets per capture, about (flows x packets per flow; default 1000000)")
    p.add_argument("--rounds", type=int, metavar="R", help="timed rounds after a warm-up (default 3)")
    p.add_argument("--dpkt-packets", type=int, metavar="N",
                   help="packets the dpkt pipeline reads (default 50000)")
    p.add_argument("--scapy-packets", type=int, metavar="N",
                   help="packets the scapy pipeline reads (default 2000)")
    p.add_argument("--baselines", default=",".join(BASELINES), metavar="LIST",
                   help=f"baselines to run (default {','.join(BASELINES)}; 'none' for none)")
    p.add_argument("--no-cold-jit", action="store_true",
                   help="skip the cold JIT measurement (a compile from scratch, ~1-2 minutes)")
    p.set_defaults(run=main)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{flag} {text}: a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise BadInput(f"{flag} {text}: numbers of at least 1")
    return values


def settings(args: argparse.Namespace) -> dict:
    """The run's settings: the defaults (or --quick's) overridden by the flags."""
    s = dict(QUICK if args.quick else DEFAULTS)
    if args.sizes:
        from egressd.bench.gen import SIZES
        s["sizes"] = [v.strip() for v in args.sizes.split(",") if v.strip()]
        if not s["sizes"] or set(s["sizes"]) - set(SIZES):
            raise BadInput(f"--sizes {args.sizes}: choose from {','.join(SIZES)}")
    for flag in ("flows", "domains"):
        if getattr(args, flag):
            s[flag] = _ints(getattr(args, flag), f"--{flag}")
    for flag in ("packets", "rounds", "dpkt_packets", "scapy_packets"):
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                raise BadInput(f"--{flag.replace('_', '-')} {value}: at least 1")
            s[flag] = value
    chosen = [b.strip() for b in args.baselines.split(",") if b.strip()]
    if chosen == ["none"]:
        chosen = []
    if set(chosen) - set(BASELINES):
        raise BadInput(f"--baselines {args.baselines}: choose from {','.join(BASELINES)} or none")
    s["baselines"] = chosen
    if args.dir and not Path(args.dir).is_dir():
        raise BadInput(f"--dir {args.dir}: not a directory")
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path and not Path(path).resolve().parent.is_dir():
            raise BadInput(f"{flag} {path}: directory {Path(path).parent} does not exist")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BadInput("--plot needs matplotlib: pip install 'egressd[test]' "
                           "(or pip install matplotlib)") from None
    s["cold_jit"] = not (args.quick or args.no_cold_jit)
    s["full_grid"] = args.full_grid
    return s


def cells(s: dict) -> list[tuple[str, int, int]]:
    """The headline cell first (the middle of each axis, or the axis' only value), then
    the other values of each axis around it, or every combination with --full-grid."""
    def middle(axis: list, preferred: object) -> object:
        return preferred if preferred in axis else axis[len(axis) // 2]

    head = (middle(s["sizes"], HEADLINE[0]), middle(s["flows"], HEADLINE[1]),
            middle(s["domains"], HEADLINE[2]))
    if s["full_grid"]:
        rest = [(a, f, d) for a in s["sizes"] for f in s["flows"] for d in s["domains"]]
    else:
        rest = ([(a, head[1], head[2]) for a in s["sizes"]] + [(head[0], f, head[2]) for f in s["flows"]]
                + [(head[0], head[1], d) for d in s["domains"]])
    out = [head]
    for c in rest:
        if c not in out:
            out.append(c)
    return out


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    s = settings(args)
    try:
        from egressd.bench.report import print_report
        from egressd.bench.runner import run
    except ImportError as e:
        raise BadInput(f"egressd bench needs the test extra ({e.name} is missing): "
                       "pip install 'egressd[test]'") from None
    s["quick"] = args.quick
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 120, highlight=False)

    def log(msg: str) -> None:
        console.print(msg, markup=False)

    if args.dir:
        doc = run(s, Path(args.dir), log)
    else:
        with tempfile.TemporaryDirectory(prefix="egressd-bench-") as tmp:
            doc = run(s, Path(tmp), log)
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print_report(doc, Console(width=None if sys.stdout.isatty() else 140, highlight=False))
    if args.plot:
        from egressd.bench.plot import plot
        plot(doc, Path(args.plot))
    return 0
