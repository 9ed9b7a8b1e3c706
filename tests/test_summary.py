"""The stats JSON's drops by layer and top rules, and the end-of-run summary table.

The sample capture replayed under the bundled example policy; what the stats say is
recomputed from the captures themselves with tshark (which packets were dropped, which
TCP stream named which host, which packets are pings) and the AWS domain list rules the
example's allowlist stands for.  The summary is a rich table on a terminal and plain
text when stderr is piped.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, egressd
from helpers_pcap import dpkt_records, tshark_fields, tshark_pdml
from test_progress import _run_on_terminal

from egressd.engine.pipeline import REASON_LAYER, layer_of
from egressd.engine.reasons import NAMES, STAGES
from egressd.rules.policy import LAYERS

EXAMPLE = REPO / "rules" / "examples" / "egress-allowlist.yaml"
# the example's allowlist targets, in order: AWS generates one TLS pass rule per target
# (sids 1-4), one HTTP pass rule per target (5-8), then drop tls (9) and drop http (10)
TARGETS = (".pkgs.example.com", "cdn.example.com", "v6.example.com", "downloads.example.org")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOX = re.compile("[\u2500-\u257f]")


def allowlist_sid(name: str, http: bool) -> int:
    """The sid of the rule AWS's allowlist rules pick for a name (a leading dot: the
    domain and every name below it; otherwise the name exactly)."""
    for k, t in enumerate(TARGETS):
        if (name == t[1:] or name.endswith(t)) if t.startswith(".") else name == t:
            return k + 1 + (4 if http else 0)
    return 10 if http else 9


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, Path, str]:
    d = tmp_path_factory.mktemp("summary")
    res = egressd("replay", SAMPLE, "--policy", EXAMPLE, "--out", d / "out.pcap", "--dropped", d / "dropped.pcap",
                  "--stats", d / "stats.json")
    assert res.returncode == 0, res.stderr
    return json.loads((d / "stats.json").read_text()), d, res.stderr


def test_stats_counts_match_the_pcaps(run) -> None:
    s, d, _ = run
    assert {"packets_in", "bytes_in", "packets_forwarded", "bytes_forwarded", "packets_dropped",
            "bytes_dropped", "drops", "drops_by_stage", "drops_by_layer", "top_rules", "flows", "policy",
            "outputs", "elapsed_s"} <= s.keys()
    inp, out, dropped = (dpkt_records(p) for p in (SAMPLE, d / "out.pcap", d / "dropped.pcap"))
    assert (s["packets_in"], s["bytes_in"]) == (len(inp), sum(len(r.frame) for r in inp))
    assert (s["packets_dropped"], s["bytes_dropped"]) == (len(dropped), sum(len(r.frame) for r in dropped))
    assert (s["packets_forwarded"], s["bytes_forwarded"]) == (len(out), sum(len(r.frame) for r in out))
    created = sum(v for v in s["policy"]["created"].values() if isinstance(v, int))
    assert s["packets_forwarded"] == s["packets_in"] - s["packets_dropped"] + created
    assert sum(s["drops_by_layer"].values()) == sum(s["drops"].values()) == s["packets_dropped"]


def test_drops_by_layer_from_the_dropped_packets(run) -> None:
    """A dropped DNS query was the DNS Firewall's; a dropped TCP segment the stateful
    engine's (the example has no other layer that drops)."""
    s, d, _ = run
    want: Counter[str] = Counter()
    for proto, response, stream in tshark_fields(d / "dropped.pcap", "frame.protocols", "dns.flags.response",
                                                 "tcp.stream"):
        if proto.endswith(":dns") and response == "0":
            want["dns_firewall"] += 1
        else:
            assert ":tcp" in proto, proto
            want["stateful"] += 1
    assert s["drops_by_layer"] == dict(want)
    assert s["drops"] == {"dns_firewall_block": want["dns_firewall"], "stateful_drop": want["stateful"]}


def test_top_rules_from_the_capture(run) -> None:
    """Each TCP stream is decided by the allowlist rule of the name it sends, from the
    packet carrying the name to its end; pings by the allow-ping rule (sid 100); the
    look-alike mirror's DNS query by the DNS Firewall rule."""
    s, _, _ = run
    want: Counter[tuple[str, str, str]] = Counter()
    named: dict[str, tuple[str, str]] = {}
    for proto, stream, sni, host, qname, response in tshark_fields(
            SAMPLE, "frame.protocols", "tcp.stream", "tls.handshake.extensions_server_name", "http.host",
            "dns.qry.name", "dns.flags.response"):
        if stream and (sni or host):
            named.setdefault(stream, (sni or host, "http" if host else "tls"))
        if stream in named:
            name, app = named[stream]
            want["stateful", "package-hosts", str(allowlist_sid(name, app == "http"))] += 1
        elif proto.endswith((":icmp", ":icmpv6")) or ":icmp:" in proto or ":icmpv6:" in proto:
            want["stateful", "allow-ping", "100"] += 1
        elif qname == "mirror.example.net" and response == "0":
            want["dns_firewall", "known-bad-mirrors", "100"] += 1
    top = s["top_rules"]
    assert {(r["layer"], r["group"], r["rule"]): r["hits"] for r in top} == dict(want)
    assert [r["hits"] for r in top] == sorted((r["hits"] for r in top), reverse=True)
    assert [(r["layer"], r["group"], r["rule"], r["hits"]) for r in top] == \
        [(r["layer"], r["group"], r["rule"], r["hits"]) for r in s["policy"]["rule_hits"]]
    # where each was written: the line of the YAML that holds it
    lines = EXAMPLE.read_text().splitlines()
    by = {(r["layer"], r["rule"]): r for r in top}
    ping, dns = by["stateful", "100"], by["dns_firewall", "100"]
    assert ping["file"] == dns["file"] == str(EXAMPLE)
    assert ping["text"] == lines[ping["line"] - 1].strip() and "sid:100;" in ping["text"]
    assert lines[dns["line"] - 1].strip() == "- priority: 100"
    assert 'content:".pkgs.example.com"' in by["stateful", "1"]["text"]


def test_flows_seen(run) -> None:
    """A flow per TCP stream, UDP port pair and ICMP echo identifier of the inner packets
    (the last occurrence of a field is the inner header's)."""
    s, _, _ = run
    flows = set()
    for p in tshark_pdml(SAMPLE):
        last = {k: v[-1][0] for k, v in p.items()}
        if "tcp.stream" in last:
            flows.add(("tcp", last["tcp.stream"]))
        elif "icmp.ident" in last or "icmpv6.echo.identifier" in last:
            flows.add(("icmp", last.get("icmp.ident") or last["icmpv6.echo.identifier"]))
        else:
            assert len(p["udp.srcport"]) == 2, "outer and inner UDP"
            flows.add(("udp", frozenset((last["udp.srcport"], last["udp.dstport"]))))
    assert s["flows"]["created"] == len(flows)


def test_every_reason_has_a_layer() -> None:
    for code, (name, stage) in enumerate(zip(NAMES, STAGES)):
        if stage == "policy":
            assert layer_of(code) in LAYERS, name
        elif code:
            assert layer_of(code) == stage and name not in REASON_LAYER


def _plain_rows(stderr: str, title: str) -> list[list[str]]:
    """The rows of one plain-text table (cells split on two or more spaces)."""
    lines = stderr.splitlines()
    start = lines.index(f"{title}:")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("  "):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_plain_table_when_piped(run) -> None:
    s, d, err = run
    assert not ANSI.search(err) and not BOX.search(err), "piped: no colour, no box drawing"
    lines = err.splitlines()
    assert re.fullmatch(rf"egressd: {s['packets_in']} packets \({s['bytes_in']} bytes\) in [\d.]+ s: "
                        rf"forwarded {s['packets_forwarded']}, dropped {s['packets_dropped']}", lines[0])
    assert [line for line in lines if line.endswith(":")] == ["traffic:", "drops:", "flows:", "top rules:"]
    traffic = {r[0]: r[1:] for r in _plain_rows(err, "traffic")}
    assert traffic["in"] == [str(s["packets_in"]), str(s["bytes_in"]), str(SAMPLE)]
    assert traffic["forwarded"] == [str(s["packets_forwarded"]), str(s["bytes_forwarded"]), str(d / "out.pcap")]
    assert traffic["dropped"] == [str(s["packets_dropped"]), str(s["bytes_dropped"]), str(d / "dropped.pcap")]
    created = s["policy"]["created"]
    assert traffic["created"][0] == str(sum(v for v in created.values() if isinstance(v, int)))
    assert {k: int(v[0]) for k, v in traffic.items() if k in created} == \
        {k: v for k, v in created.items() if isinstance(v, int) and v}
    drops = _plain_rows(err, "drops")
    assert {(r[0], int(r[1])) for r in drops} == set(s["drops_by_layer"].items())
    assert {(r[2], int(r[3])) for r in drops} == set(s["drops"].items())
    flows = {r[0]: int(r[1]) for r in _plain_rows(err, "flows")}
    assert flows["seen"] == s["flows"]["created"]
    assert flows["passed by a rule"] == s["policy"]["flows_passed"]
    top = _plain_rows(err, "top rules")
    assert [r[:4] for r in top] == [[t["layer"], t["group"] or "-", t["rule"], str(t["hits"])]
                                    for t in s["top_rules"][:10]]
    assert top[0][4] == 'pass tls content:".pkgs.example.com"'     # the rule, shortened
    assert all(len(r[4]) <= 60 for r in top)


def test_rich_table_on_a_terminal(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    code, raw = _run_on_terminal("replay", str(SAMPLE), "--policy", str(EXAMPLE), "--out", str(tmp_path / "o.pcap"),
                                 "--stats", str(tmp_path / "s.json"), "--no-progress")
    assert code == 0
    s = json.loads((tmp_path / "s.json").read_text())
    out = raw.decode()
    assert ANSI.search(out) and BOX.search(out), "a terminal gets rich's table"
    text = ANSI.sub("", out)
    cell = r"\s*[\u2502\u2503]\s*"       # rich's column separators
    assert re.search(rf"forwarded{cell}{s['packets_forwarded']}{cell}{s['bytes_forwarded']}", text)
    for layer, n in s["drops_by_layer"].items():
        assert re.search(rf"{layer}{cell}{n}{cell}", text), layer
    t = s["top_rules"][0]
    assert re.search(rf"{t['layer']}{cell}{t['group']}{cell}{t['rule']}{cell}{t['hits']}{cell}pass tls", text)
    assert re.search(rf"seen{cell}{s['flows']['created']}", text)
