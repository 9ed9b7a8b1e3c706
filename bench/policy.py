"""The policy stage: name lookups against domain lists, and its cost in the pipeline.

    python -m egressd.bench.policy [--names 200000] [--packets 1000000] [--rounds 3]

1. Name lookups per second in the compiled FQDN table (rules.fqdn, one njit loop over
   names laid end to end, as the decide stage calls it), for allowlists of 10, 10 000
   and 100 000 domains (AWS-style targets, half `.wildcard`), against the Python
   baseline a dpkt pipeline would use: a set of the names and a walk over the name's
   label-boundary suffixes.  Half the names queried match.  Both must give the same
   count of matches before a time counts.
2. Policy load and compile time for those lists (a domain list rule group JSON).
3. The pipeline on the pass-through benchmark's capture (bench/traffic.py, 4096 TCP
   flows, no names) with no policy and with the 10 000-domain allowlist under strict
   order and drop_established: packets/s and the decide stage's ns/packet.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit

from egressd.bench.machine import machine
from egressd.bench.traffic import make_capture
from egressd.engine.pipeline import replay
from egressd.rules.compile import compile_policy
from egressd.rules.fqdn import lookup
from egressd.rules.load import load_policies


def allowlist(n: int, rng: np.random.Generator) -> list[str]:
    words = ["pkgs", "cdn", "api", "mirror", "static", "edge", "auth", "repo"]
    out = []
    for k in range(n):
        host = f"{words[k % len(words)]}{k}.{rng.choice(['example', 'corp', 'svc'])}.test"
        out.append("." + host if k % 2 else host)
    return out


def queries(targets: list[str], count: int, rng: np.random.Generator) -> list[bytes]:
    """Half under the list (an exact name, or a subdomain of a wildcard), half not."""
    out = []
    for k in range(count):
        t = targets[int(rng.integers(len(targets)))]
        if k % 2:
            out.append(("www" + t if t.startswith(".") else t).encode())
        else:
            out.append(("no-" + t.lstrip(".") + ".other.test").encode())
    return out


def target_sets(targets: list[str]) -> tuple[set[bytes], set[bytes]]:
    """The exact and the wildcard targets, as python_allowed takes them."""
    return ({t.lower().encode() for t in targets if not t.startswith(".")},
            {t[1:].lower().encode() for t in targets if t.startswith(".")})


def rule_group(targets: list[str], home_net: list[str] | None = None) -> dict:
    """The `describe-rule-group` JSON of an allowlist of `targets` (TLS SNI and HTTP
    Host, strict order), with HOME_NET `home_net` if given."""
    variables = ({"RuleVariables": {"IPSets": {"HOME_NET": {"Definition": home_net}},
                                    "PortSets": {}}} if home_net else {})
    return {"RuleGroup": {**variables, "RulesSource": {"RulesSourceList": {
        "Targets": targets, "TargetTypes": ["TLS_SNI", "HTTP_HOST"],
        "GeneratedRulesType": "ALLOWLIST"}},
        "StatefulRuleOptions": {"RuleOrder": "STRICT_ORDER"}},
        "RuleGroupResponse": {"RuleGroupName": "bench", "Type": "STATEFUL",
                              "RuleGroupArn": "arn:aws:network-firewall:us-east-1:111122223333:stateful-rulegroup/bench"}}


@njit(cache=True, nogil=True)
def _lookups(buf, off, size, fq, hits, owners):
    found = 0
    for k in range(off.shape[0]):
        if lookup(buf, off[k], size[k], *fq, hits, owners, k + 1):
            found += 1
    return found


def python_allowed(name: bytes, exact: set[bytes], wild: set[bytes]) -> bool:
    """What a Python pipeline does per name: a set of the exact targets, and a walk over
    the name's label-boundary suffixes in the set of the wildcard ones (".x.test" is
    stored as "x.test": it names x.test and everything below it)."""
    if name in exact:
        return True
    while True:
        if name in wild:
            return True
        dot = name.find(b".")
        if dot < 0:
            return False
        name = name[dot + 1:]


def python_lookups(names: set[bytes], wild: set[bytes], qs: list[bytes]) -> int:
    return sum(python_allowed(q, names, wild) for q in qs)


def best(fn, rounds: int) -> tuple[float, list[float], object]:
    """fn() once untimed, then `rounds` timed: (fastest, every time, last result)."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=200_000)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    result: dict = {"machine": machine(), "lookups": [], "pipeline": {}}
    print(json.dumps(result["machine"]))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        compiled_10k = None
        for n in (10, 10_000, 100_000):
            targets = allowlist(n, rng)
            path = work / f"allow-{n}.json"
            path.write_text(json.dumps(rule_group(targets)))
            t0 = time.perf_counter()
            cp = compile_policy(load_policies([path]))
            compile_s = time.perf_counter() - t0
            if n == 10_000:
                compiled_10k = path
            qs = queries(targets, args.names, rng)
            buf = np.frombuffer(b"".join(qs), np.uint8)
            size = np.array([len(q) for q in qs], np.int64)
            off = np.concatenate(([0], np.cumsum(size)[:-1])).astype(np.int64)
            hits = np.zeros(cp.names.n_sets, np.int64)
            owners = np.zeros(cp.names.n_sets, np.int64)
            fq = cp.names.arrays()
            t_nb, _, found = best(lambda: _lookups(buf, off, size, fq, hits, owners), args.rounds)
            exact, wild = target_sets(targets)
            t_py, _, found_py = best(lambda: python_lookups(exact, wild, qs), args.rounds)
            assert found == found_py == len(qs) // 2, (found, found_py)
            row = {"domains": n, "compile_s": round(compile_s, 3), "rule_rows": sum(cp.summary["rules"].values()),
                   "egressd_lookups_per_s": round(len(qs) / t_nb), "python_lookups_per_s": round(len(qs) / t_py),
                   "ratio": round(t_py / t_nb, 1)}
            result["lookups"].append(row)
            print(json.dumps(row))
        cap = work / "traffic.pcap"
        make_capture(cap, args.packets)
        for label, pol in (("no policy", None), ("10k-domain allowlist", compiled_10k)):
            cp = compile_policy(load_policies([pol])) if pol else None
            replay(cap, "/dev/null", policy=cp)  # warm-up: compile or load the kernels
            rates = []
            stages = {}
            for _ in range(args.rounds):
                st = replay(cap, "/dev/null", policy=cp)
                d = st.to_dict()
                rates.append(d["packets_per_s"])
                if d["packets_per_s"] == max(rates):
                    stages = {k: v["ns_per_packet"] for k, v in d["stages"].items()}
            result["pipeline"][label] = {"packets_per_s": max(rates), "ns_per_packet": stages}
            print(label, json.dumps(result["pipeline"][label]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
