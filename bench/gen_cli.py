"""`egressd gen OUT.pcap ...`: write seeded GWLB traffic (bench/gen.py) for benchmarks
and tests, and say what was written.

The flags are generate()'s arguments one for one; an argument it cannot use (a mix
kind it does not know, a share outside [0, 1], a names file line that is no host name,
an output that cannot be written) is a BadInput naming the flag or file.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from egressd.bench import gen
from egressd.bench.hostnames import EGRESS_NAMES
from egressd.cli import EXIT_OK, BadInput, _first_run_notice, _plain_tables, _rich_tables

# generate()'s parameter -> the flag that sets it (for error messages)
FLAGS = {"flows": "--flows", "packets_per_flow": "--packets-per-flow", "mix": "--mix",
         "names": "--names", "ipv6_share": "--ipv6-share", "sizes": "--sizes",
         "endpoints": "--endpoints", "split_client_hello_share": "--split-client-hello-share",
         "out_of_order_share": "--out-of-order-share"}


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "gen", help="write seeded GWLB-encapsulated traffic (benchmarks, tests)",
        description="Write a pcap of whole conversations as AWS Gateway Load Balancer hands "
                    "them to a target (GENEVE with endpoint, attachment and flow cookie "
                    "options): TLS with a ClientHello naming the server, HTTP with Host, DNS "
                    "queries and answers, QUIC Initials, plain UDP, ICMP echo; IPv4 and IPv6. "
                    "The same arguments always give the same bytes.")
    g.add_argument("out", metavar="OUT.pcap", help="capture to write (nanosecond pcap, Ethernet)")
    g.add_argument("--flows", type=int, default=10_000, metavar="N", help="flows (default 10000)")
    g.add_argument("--packets-per-flow", type=int, default=10, metavar="K",
                   help="packets per flow (default 10); TCP flows have at least their 7-10 "
                        "handshake, first-message and closing packets, DNS flows 2 or 4")
    g.add_argument("--mix", metavar="KIND=W,...",
                   help="weights of the flow kinds " + ",".join(gen.KINDS) + " (missing: 0; "
                        "default " + ",".join(f"{k}={w}" for k, w in gen.DEFAULT_MIX.items()) + ")")
    g.add_argument("--names", metavar="FILE",
                   help="host names for SNI, Host and DNS, one a line (# comments); default: "
                        f"a built-in list of {len(EGRESS_NAMES)} names VPC workloads reach")
    g.add_argument("--ipv6-share", type=float, default=0.2, metavar="F",
                   help="share of IPv6 flows (default 0.2)")
    g.add_argument("--sizes", choices=tuple(gen.SIZES), default="imix",
                   help="inner IP length of bulk packets: imix (64/576/1500 bytes, 7:4:1), 64, "
                        "1500, or jumbo (8500, GWLB's MTU); default imix")
    g.add_argument("--endpoints", type=int, default=3, metavar="N",
                   help="GWLB endpoints the flows come through (1-255, default 3); every flow "
                        "has its own cookie and GWLB source port")
    g.add_argument("--split-client-hello-share", type=float, default=0.1, metavar="F",
                   help="share of TLS flows whose ClientHello is cut into 2-4 segments (default 0.1)")
    g.add_argument("--out-of-order-share", type=float, default=0.0, metavar="F",
                   help="share of TCP flows with two adjacent segments swapped (default 0)")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on when stderr is a terminal)")
    g.set_defaults(run=run)


def parse_mix(text: str) -> dict[str, float]:
    """`tls=0.5,dns=0.2` -> {"tls": 0.5, "dns": 0.2}; BadInput naming --mix."""
    mix: dict[str, float] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in gen.KINDS:
            raise BadInput(f"--mix {text}: unknown kind {key!r}; choose from {', '.join(gen.KINDS)}")
        try:
            mix[key] = float(value) if eq else float("nan")
        except ValueError:
            mix[key] = float("nan")
        if not mix[key] >= 0:
            raise BadInput(f"--mix {text}: the weight of {key} must be a number >= 0, as {key}=0.5")
    return mix


def read_names(path: str) -> list[str]:
    """The names of a names file, one a line (blank lines and # comments skipped);
    BadInput naming the file, the line and the reason."""
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except OSError as e:
        raise BadInput(f"--names {path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise BadInput(f"--names {path}: not ASCII (byte {e.start}); write IDNs in their "
                       f"xn-- form") from None
    names = []
    for k, line in enumerate(lines, 1):
        name = line.split("#", 1)[0].strip()
        if name:
            try:
                gen.check_name(name)
            except gen.GenError as e:
                raise BadInput(f"--names {path}, line {k}: {e.reason}") from None
            names.append(name)
    if not names:
        raise BadInput(f"--names {path}: no names in the file")
    return names


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.parent.is_dir():
        raise BadInput(f"OUT.pcap {out}: directory {out.parent} does not exist")
    kw = {"flows": args.flows, "packets_per_flow": args.packets_per_flow,
          "mix": parse_mix(args.mix) if args.mix else None,
          "names": read_names(args.names) if args.names else list(EGRESS_NAMES),
          "ipv6_share": args.ipv6_share, "sizes": args.sizes, "endpoints": args.endpoints,
          "split_client_hello_share": args.split_client_hello_share,
          "out_of_order_share": args.out_of_order_share, "seed": args.seed}
    existed = out.exists()
    show = sys.stderr.isatty() if args.progress is None else args.progress
    _first_run_notice()
    t0 = time.perf_counter()
    try:
        if show:
            counts = _with_progress(lambda progress: gen.generate(out, progress=progress, **kw))
        else:
            counts = gen.generate(out, **kw)
    except gen.GenError as e:
        raise BadInput(f"{FLAGS[e.param]} {_shown(kw, e.param, args)}: {e.reason}") from None
    except OSError as e:
        if not existed and out.is_file():
            out.unlink()
        raise BadInput(f"OUT.pcap {out}: cannot write: {e.strerror}") from None
    _summary(out, counts, time.perf_counter() - t0)
    return EXIT_OK


def _shown(kw: dict, param: str, args: argparse.Namespace) -> object:
    """The value a user gave for `param`, as given."""
    if param == "mix":
        return args.mix
    if param == "names":
        return args.names or "(built-in list)"
    return kw[param]


def _with_progress(work):
    """work(progress) under a bar of the packets written."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("gen"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task("gen", total=None)
        return work(lambda done, total: bar.update(task, completed=done, total=total))


def _summary(out: Path, counts: dict, seconds: float) -> None:
    """A headline and the flows by kind: rich on a terminal, plain text otherwise (as
    `egressd replay` prints its summary), on stderr."""
    total = counts["total"]
    head = (f"egressd gen: {total['packets']} packets ({total['bytes']} bytes of frames), "
            f"{total['flows']} flows in {seconds:.3f} s ({round(total['packets'] / seconds)} "
            f"packets/s) -> {out}")
    rows: list[list[object]] = [[k, counts[k]["flows"], counts[k]["packets"]]
                                for k in gen.KINDS if counts[k]["flows"]]
    rows.append(["total", total["flows"], total["packets"]])
    rows += [["  IPv6", counts["ipv6_flows"], ""],
             ["  split ClientHellos", counts["split_client_hellos"], ""],
             ["  out of order", counts["out_of_order"], ""]]
    tables = [("flows by kind", ["kind", "flows", "packets"], rows)]
    warning = None
    if counts["quic"]["flows"] and not counts["quic_initials"]:
        warning = "warning: aioquic is not installed: QUIC flows carry no Initial (no name)"
    if sys.stderr.isatty():
        print(head, file=sys.stderr)
        _rich_tables(tables)
        lines = []
    else:
        lines = [head, *_plain_tables(tables)]
    if warning:
        lines.append(warning)
    if lines:
        print("\n".join(lines), file=sys.stderr)
