"""EVE logs (engine/eve.py): AWS Network Firewall's alert/flow log lines, judged from outside.

The captures are the committed real-client ones (pcaps/clients/, under the AWS domain
allowlist of test_policy_replay) and the sample (pcaps/sample-gwlb.pcap under
rules/examples/egress-allowlist.yaml).  Every line must validate against the schema
kept in the repo (engine/eve.schema.json, JSON Schema 2020-12, formats checked).  The
oracles are things nobody here wrote: tshark's dissection of the same capture (the
names, 5-tuples, timestamps, DNS ids and answers, GWLB options, per-flow packet and
byte counts) and of the dropped-packets pcap (which flows were blocked, and how many
of their packets), Suricata 7 itself (the engine under Network Firewall) running the
policy's rules over the same captures, jq running the queries AWS users run on
Network Firewall logs, and a reader written from the AWS log documentation
(firewall-logging-contents.html: firewall_name, availability_zone, event_timestamp in
epoch seconds, event in Suricata's EVE format).  QUIC names come from Suricata's QUIC
captures wrapped as GWLB sends them.

The benchmark at the end replays a 1 M-packet capture with and without EVE in one run
and prints both rates.
"""
from __future__ import annotations

import ipaddress
import json
import shutil
import struct
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from conftest import PCAPS, REPO, SAMPLE, egressd
from gwlb import wrap, write_pcap
from helpers_pcap import scapy_records

from egressd.bench.traffic import make_capture
from egressd.engine import eve as eve_mod
from egressd.engine.eve import EveWriter, FlowState, signature_id
from egressd.engine.flows import FlowConfig
from egressd.engine.pcapio import CaptureError
from egressd.engine.pipeline import Pipeline, replay
from egressd.engine.reasons import Verdict
from egressd.rules.compile import compile_policy
from egressd.rules.load import load_policies

SCHEMA = REPO / "engine" / "eve.schema.json"
POLICIES = Path(__file__).resolve().parent / "data" / "policies"
CLIENT_POLICY = [POLICIES / "clients.yaml"]
SAMPLE_POLICY = [REPO / "rules" / "examples" / "egress-allowlist.yaml"]
CLIENTS = ("chromium", "curl-http", "curl-tls", "dns", "openssl-s_client", "python-ssl")
CAPTURES = {**{c: (PCAPS / "clients" / f"{c}.pcap", CLIENT_POLICY) for c in CLIENTS},
            "sample": (SAMPLE, SAMPLE_POLICY)}
PROTO = {"TCP": 6, "UDP": 17, "ICMP": 1, "IPv6-ICMP": 58}
# Suricata's names for TLS versions, written out here from its documentation (EVE, tls)
TLS_NAMES = {0x0301: "TLSv1", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}


# --- running egressd ----------------------------------------------------------------------

@cache
def cli_has_eve() -> bool:
    """`egressd replay --eve` once the CLI has it; the engine's replay() until then."""
    return "--eve" in egressd("replay", "--help").stdout


@dataclass
class Run:
    eve: Path
    lines: list[dict]
    stats: dict
    dropped: Path


def run_replay(tmp: Path, inp: Path, policies: list[Path] | None,
               types: frozenset[str] | None = None) -> Run:
    tmp.mkdir(parents=True, exist_ok=True)
    eve, out, dropped, stats = tmp / "eve.json", tmp / "out.pcap", tmp / "dropped.pcap", tmp / "stats.json"
    if cli_has_eve():
        args = [a for p in policies or () for a in ("--policy", p)]
        if types is not None:
            args += ["--eve-types", ",".join(sorted(types))]
        res = egressd("replay", inp, *args, "--out", out, "--dropped", dropped, "--stats", stats,
                      "--eve", eve, "--flow-capacity", "4096", "--no-progress")
        assert res.returncode == 0, res.stderr
        summary = json.loads(stats.read_text())
    else:
        policy = compile_policy(load_policies(policies)) if policies else None
        summary = replay(inp, out, dropped, flows=FlowConfig(capacity=4096), policy=policy, eve=eve,
                         eve_types=types).to_dict()
    text = eve.read_text()
    assert text == "" or text.endswith("\n")
    return Run(eve, [json.loads(line) for line in text.splitlines()], summary, dropped)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    tmp = tmp_path_factory.mktemp("eve")
    return {name: run_replay(tmp / name, inp, pol) for name, (inp, pol) in CAPTURES.items()}


@pytest.fixture(scope="session")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="session")
def jq() -> str:
    path = shutil.which("jq")
    assert path, "jq is required (apt-get install -y jq); .ci/run installs it"
    return path


def events(run: Run, kind: str) -> list[dict]:
    return [line["event"] for line in run.lines if line["event"]["event_type"] == kind]


# --- tshark's view -------------------------------------------------------------------------

FIELDS = ("frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "ip.proto", "ipv6.nxt",
          "ip.len", "ipv6.plen", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport",
          "geneve.option.class", "geneve.option.type", "geneve.option.unknown.data", "tls.handshake.type", "tls.handshake.extensions_server_name",
          "tls.handshake.version", "tls.handshake.extensions.supported_version", "http.request.method",
          "http.request.uri", "http.host", "dns.id", "dns.flags.response", "dns.flags.rcode",
          "dns.qry.name", "dns.qry.type", "dns.a", "dns.aaaa")


@dataclass(frozen=True)
class Frame:
    us: int                   # capture time, microseconds
    src: str
    dst: str
    proto: int
    sport: int | None
    dport: int | None
    ip_len: int
    gwlb: tuple[str, str, str]  # GWLB's options, "" outside GENEVE
    f: dict                   # every field, all occurrences (comma-separated)

    def last(self, field: str) -> str:
        return self.f[field].split(",")[-1]

    @property
    def tuple5(self) -> tuple:
        return (self.src, self.sport, self.dst, self.dport, self.proto)


@cache
def tshark_frames(pcap: Path) -> tuple[Frame, ...]:
    """The inner packet of every frame (the last occurrence of each field is inside GENEVE)."""
    cmd = ["tshark", "-r", str(pcap), "-n", "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
           "-E", "separator=\t", *(a for f in FIELDS for a in ("-e", f))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    frames = []
    for line in out.splitlines():
        f = dict(zip(FIELDS, line.split("\t")))
        last = {k: v.split(",")[-1] for k, v in f.items()}
        v6 = bool(last["ipv6.src"])
        proto = int(last["ipv6.nxt"] if v6 else last["ip.proto"])
        sport = dport = None
        if proto == 6:
            sport, dport = int(last["tcp.srcport"]), int(last["tcp.dstport"])
        elif proto == 17:
            sport, dport = int(last["udp.srcport"]), int(last["udp.dstport"])
        ip_len = int(last["ipv6.plen"]) + 40 if v6 else int(last["ip.len"])
        src, dst = (last["ipv6.src"], last["ipv6.dst"]) if v6 else (last["ip.src"], last["ip.dst"])
        us = int(Decimal(f["frame.time_epoch"]) * 1_000_000)
        # GWLB's options: class 0x0108, types 1 (endpoint), 2 (attachment), 3 (cookie)
        opts = {(int(c, 16), int(t, 16)): d for c, t, d in zip(*(f[k].split(",") for k in (
            "geneve.option.class", "geneve.option.type", "geneve.option.unknown.data"))) if c}
        frames.append(Frame(us, src, dst, proto, sport, dport, ip_len,
                            tuple(opts.get((0x0108, t), "") for t in (1, 2, 3)), f))
    return tuple(frames)


def event_us(ev: dict) -> int:
    t = datetime.strptime(ev["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
    return int(t.timestamp()) * 1_000_000 + t.microsecond


def ip(text: str) -> str:
    """An address as tshark prints it (IPv6 compressed; EVE has Suricata's long form)."""
    return ipaddress.ip_address(text).compressed


def event_tuple(ev: dict) -> tuple:
    return (ip(ev["src_ip"]), ev.get("src_port"), ip(ev["dest_ip"]), ev.get("dest_port"), PROTO[ev["proto"]])


def frame_of(pcap: Path, ev: dict) -> Frame:
    """The frame an event was written for: its time and inner 5-tuple."""
    found = [f for f in tshark_frames(pcap) if f.us == event_us(ev) and f.tuple5 == event_tuple(ev)]
    assert len(found) == 1, (ev, found)
    return found[0]


def tls_version(f: Frame) -> str:
    offered = [int(v, 16) for v in f.f["tls.handshake.extensions.supported_version"].split(",") if v]
    offered = [v for v in offered if not (v & 0x0F0F == 0x0A0A and v >> 8 == v & 0xFF)]  # GREASE
    return TLS_NAMES[max(offered) if offered else int(f.last("tls.handshake.version"), 16)]


# --- the schema ---------------------------------------------------------------------------

def test_schema_rejects_what_the_format_forbids(validator: Draft202012Validator, runs: dict[str, Run]) -> None:
    """The schema is no rubber stamp: each mutation of a valid line breaks it."""
    alert = next(line for line in runs["sample"].lines if line["event"]["event_type"] == "alert")
    flow = next(line for line in runs["sample"].lines if line["event"]["event_type"] == "flow")
    assert validator.is_valid(alert) and validator.is_valid(flow)

    def broken(line: dict, change) -> bool:
        copy = json.loads(json.dumps(line))
        change(copy)
        return not validator.is_valid(copy)

    assert broken(alert, lambda d: d["event"]["alert"].update(action="dropped"))
    assert broken(alert, lambda d: d["event"].update(src_ip="0000:0000:0000:0000:0000:ffff:0a01:0114"))  # IPv4
    assert broken(alert, lambda d: d["event"].update(src_ip="fd00::10"))   # Suricata's long form
    assert broken(alert, lambda d: d["event"].update(dest_ip="10.1.1.300"))
    assert broken(alert, lambda d: d["event"].pop("gwlb"))
    assert broken(alert, lambda d: d["event"].update(timestamp="2023-11-14T22:13:20Z"))
    assert broken(alert, lambda d: d.update(event_timestamp=1700000000))           # AWS: a string
    assert broken(alert, lambda d: d["event"]["alert"]["metadata"].pop("reason"))  # blocked says why
    assert broken(alert, lambda d: d["event"].update(extra=1))
    assert broken(flow, lambda d: d["event"]["flow"].pop("pkts_toserver"))
    assert broken(flow, lambda d: d["event"].update(event_type="alert"))
    assert broken(flow, lambda d: d["event"]["gwlb"].update(flow_cookie="0x1234"))


@pytest.mark.parametrize("name", CAPTURES)
def test_every_line_validates(validator: Draft202012Validator, runs: dict[str, Run], name: str) -> None:
    lines = runs[name].lines
    assert lines
    for line in lines:
        errors = sorted(validator.iter_errors(line), key=str)
        assert not errors, f"{errors[0].message} at {list(errors[0].absolute_path)} in {line}"


# --- against tshark -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["chromium", "curl-tls", "openssl-s_client", "python-ssl", "sample"])
def test_tls_events_are_tsharks_client_hellos(runs: dict[str, Run], name: str) -> None:
    """One tls event per ClientHello with SNI, on the frame tshark completes it on."""
    pcap = CAPTURES[name][0]
    hellos = [f for f in tshark_frames(pcap) if "1" in f.f["tls.handshake.type"].split(",")
              and f.last("tls.handshake.extensions_server_name")]
    want = [(f.us, f.tuple5, f.last("tls.handshake.extensions_server_name").lower(), tls_version(f))
            for f in hellos]
    got = [(event_us(e), event_tuple(e), e["tls"]["sni"], e["tls"]["version"]) for e in events(runs[name], "tls")]
    assert got == want and want
    assert {e["app_proto"] for e in events(runs[name], "tls")} == {"tls"}


def test_http_events_are_tsharks_requests(runs: dict[str, Run]) -> None:
    pcap = CAPTURES["curl-http"][0]
    want = []
    for f in tshark_frames(pcap):
        if f.f["http.request.method"]:
            host = f.last("http.host").lower()
            host = host.rsplit(":", 1)[0] if ":" in host else host
            want.append((f.us, f.tuple5, host, f.last("http.request.method"), f.last("http.request.uri")))
    got = [(event_us(e), event_tuple(e), e["http"]["hostname"], e["http"]["http_method"], e["http"]["url"])
           for e in events(runs["curl-http"], "http")]
    assert got == want and len(want) == 5


@pytest.mark.parametrize("name", ["dns", "sample"])
def test_dns_events_are_tsharks_messages(runs: dict[str, Run], name: str) -> None:
    """Queries over UDP and TCP; answers over UDP (engine.l7 reads TCP clients only),
    with tshark's id, rcode and A/AAAA addresses."""
    pcap = CAPTURES[name][0]
    want_q, want_a, tcp_answers = [], [], 0
    for f in tshark_frames(pcap):
        if not f.f["dns.id"]:
            continue
        key = (f.us, f.tuple5, int(f.last("dns.id"), 16), f.last("dns.qry.name"))
        if f.last("dns.flags.response") in ("0", "False"):
            want_q.append((*key, int(f.last("dns.qry.type"))))
        elif f.proto == 17:
            addrs = sorted(a for field in ("dns.a", "dns.aaaa") for a in f.f[field].split(",") if a)
            want_a.append((*key, int(f.last("dns.flags.rcode")), addrs))
        else:
            tcp_answers += 1
    rrtype = {"A": 1, "AAAA": 28}
    got_q, got_a = [], []
    for e in events(runs[name], "dns"):
        base = (event_us(e), event_tuple(e))
        if "query" in e["dns"]:
            (q,) = e["dns"]["query"]
            got_q.append((*base, q["id"], q["rrname"], rrtype[q["rrtype"]]))
        else:
            a = e["dns"]["answer"]
            rcode = eve_mod._RCODE.index(a["rcode"])
            got_a.append((*base, a["id"], a["rrname"], rcode, sorted(ip(x["rdata"]) for x in a.get("answers", []))))
    assert got_q == want_q and want_q
    assert got_a == want_a and want_a
    if name == "dns":
        assert tcp_answers == 2  # tcp.example.com and the IPv6 TCP query: answered, not logged


@pytest.mark.parametrize("name", CAPTURES)
def test_event_gwlb_options_are_tsharks(runs: dict[str, Run], name: str) -> None:
    """Packet events carry their frame's GWLB options; flow events their first frame's."""
    pcap = CAPTURES[name][0]
    frames = tshark_frames(pcap)
    for ev in (line["event"] for line in runs[name].lines):
        g = ev["gwlb"]
        if ev["event_type"] == "flow":
            f = next(f for f in frames if f.us == event_us({"timestamp": ev["flow"]["start"]})
                     and f.tuple5[:4] == event_tuple(ev)[:4])
        else:
            f = frame_of(pcap, ev)
        assert (g["endpoint_id"], g["attachment_id"], g["flow_cookie"]) == f.gwlb


def flows_by_tshark(pcap: Path) -> dict[tuple, dict]:
    """Frames grouped into connections: GWLB endpoint, protocol, the two endpoints
    (ICMP by addresses); the first frame's sender is the initiator."""
    out: dict[tuple, dict] = {}
    for f in tshark_frames(pcap):
        ends = frozenset({(f.src, f.sport), (f.dst, f.dport)})
        key = (f.gwlb[0], f.proto, ends)
        c = out.setdefault(key, {"src": f.src, "sport": f.sport, "start": f.us, "pkts": [0, 0], "bytes": [0, 0]})
        back = (f.src, f.sport) != (c["src"], c["sport"])
        c["pkts"][back] += 1
        c["bytes"][back] += f.ip_len
        c["end"] = f.us
    return out


@pytest.mark.parametrize("name", CAPTURES)
def test_one_flow_event_per_flow_with_tsharks_counts(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    flows = events(run, "flow")
    s = run.stats["flows"]
    assert len(flows) == s["created"] == len({e["flow_id"] for e in flows})
    assert Counter(e["proto"].lower() for e in flows) == Counter(s["by_protocol"])
    assert sum(e["flow"]["pkts_toserver"] for e in flows) == s["packets"]["toserver"]
    assert sum(e["flow"]["bytes_toclient"] for e in flows) == s["bytes"]["toclient"]
    # every packet event belongs to a flow that has its flow event
    assert {e["flow_id"] for e in (line["event"] for line in run.lines)} == {e["flow_id"] for e in flows}
    got = {}
    for e in flows:
        ends = frozenset({(ip(e["src_ip"]), e.get("src_port")), (ip(e["dest_ip"]), e.get("dest_port"))})
        fl = e["flow"]
        got[(e["gwlb"]["endpoint_id"], PROTO[e["proto"]], ends)] = {
            "src": ip(e["src_ip"]), "sport": e.get("src_port"), "start": event_us({"timestamp": fl["start"]}),
            "end": event_us({"timestamp": fl["end"]}), "pkts": [fl["pkts_toserver"], fl["pkts_toclient"]],
            "bytes": [fl["bytes_toserver"], fl["bytes_toclient"]]}
    assert got == flows_by_tshark(CAPTURES[name][0])


@pytest.mark.parametrize("name", CAPTURES)
def test_blocked_alerts_are_the_dropped_flows(tshark: str, runs: dict[str, Run], name: str) -> None:
    """One blocked alert per flow the policy cut (all its drops are by one rule here),
    on the first dropped packet; the flow event counts every dropped packet.  The
    dropped pcap, read by tshark, says which packets those are."""
    run = runs[name]
    dropped = tshark_frames(run.dropped)
    flows = {e["flow_id"]: e for e in events(run, "flow")}
    alerts = [e for e in events(run, "alert") if e["alert"]["action"] == "blocked"]
    assert len({e["flow_id"] for e in alerts}) == len(alerts)
    policy_drops = run.stats["drops_by_stage"].get("policy", 0)
    assert len(dropped) == policy_drops == sum(e["flow"]["pkts_blocked"] for e in flows.values())
    assert sum(e["flow"]["alerts_logged"] for e in flows.values()) == len(events(run, "alert"))
    assert sum(e["flow"]["action"] == "drop" for e in flows.values() if "action" in e["flow"]) == \
        run.stats["policy"]["flows_dropped"]
    per_flow = Counter()
    for f in dropped:
        per_flow[(f.gwlb[0], f.proto, frozenset({(f.src, f.sport), (f.dst, f.dport)}))] += 1
    for a in alerts:
        first = frame_of(CAPTURES[name][0], a)
        mine = [f for f in dropped if f.gwlb[0] == first.gwlb[0] and f.proto == first.proto
                and {(f.src, f.sport), (f.dst, f.dport)} == {(first.src, first.sport), (first.dst, first.dport)}]
        assert mine and (mine[0].us, mine[0].tuple5) == (first.us, first.tuple5), "the first dropped packet"
        fl = flows[a["flow_id"]]["flow"]
        assert fl["pkts_blocked"] == len(mine) == fl["alerts"] and fl["alerts_logged"] == 1 and fl["alerted"]
        assert a["alert"]["metadata"]["reason"] == [
            {"stateful": "stateful_drop", "dns_firewall": "dns_firewall_block"}[a["alert"]["metadata"]["layer"][0]]]
    assert len(alerts) == len(per_flow)


def test_alert_fields_follow_the_rules(runs: dict[str, Run]) -> None:
    """signature, sid, rev, severity from the Suricata rule AWS generates for the list
    (msg, sid, rev:1, priority:1); a DNS Firewall rule gets its stable egressd id."""
    sigs = {e["alert"]["signature"]: e for name in CAPTURES for e in events(runs[name], "alert")}
    tls = sigs["not matching any TLS allowlisted FQDNs"]["alert"]
    assert (tls["rev"], tls["severity"], tls["category"], tls["metadata"]["layer"]) == (1, 1, "", ["stateful"])
    assert tls["signature_id"] == int(tls["metadata"]["rule"][0])
    assert "not matching any HTTP allowlisted FQDNs" in sigs
    dns = next(e for e in events(runs["sample"], "alert") if e["alert"]["metadata"]["layer"] == ["dns_firewall"])
    assert dns["alert"]["signature_id"] == signature_id("dns_firewall", "known-bad-mirrors", "100") >= 0xF0000000
    assert dns["dns"]["query"][0]["rrname"] == "mirror.example.net" and dns["app_proto"] == "dns"
    assert dns["alert"]["category"] == "DNS Firewall"


@pytest.mark.parametrize("capture", ["quic-ietf", "quic-frag"])
def test_quic_names_are_tls_events(validator: Draft202012Validator, corpus: Path, tmp_path: Path,
                                   capture: str) -> None:
    """QUIC Initials (Suricata's captures, wrapped as GWLB sends them): a tls event with
    app_proto "quic" on the datagram that completes the ClientHello, as tshark says."""
    src = corpus / "suricata-verify" / capture / "input.pcap"
    linktype, records = scapy_records(src)
    assert linktype == 1
    wrapped = write_pcap(tmp_path / "gwlb.pcap", [wrap(r.frame[14:]) for r in records], [r.ts_ns for r in records])
    run = run_replay(tmp_path / "run", wrapped, None)
    assert all(validator.is_valid(line) for line in run.lines)
    (hello,) = [f for f in tshark_frames(src) if f.last("tls.handshake.extensions_server_name")]
    (ev,) = events(run, "tls")
    assert (event_us(ev), event_tuple(ev), ev["app_proto"], ev["tls"]) == (
        hello.us, hello.tuple5, "quic", {"sni": hello.last("tls.handshake.extensions_server_name"),
                                         "version": "TLS 1.3"})


# --- against Suricata 7 (the engine under AWS Network Firewall) -----------------------------

SURICATA = "/usr/bin/suricata"
CLIENT_HOME = "[10.99.0.1/32,fd00:99::1/128]"   # pcaps/README.md, "Real clients"


def suricata_eve(capture: Path, rules: list[str], out: Path) -> list[dict]:
    """Suricata's own EVE for a capture (it decodes GWLB's GENEVE itself), in IPS mode,
    with Debian's configuration logging alerts, tls/http (extended), dns and flows."""
    out.mkdir(parents=True)
    cfg = yaml.safe_load(Path("/etc/suricata/suricata.yaml").read_text())
    eve = next(o["eve-log"] for o in cfg["outputs"] if "eve-log" in o)
    eve["types"] = [{"alert": {"tagged-packets": False}}, {"tls": {"extended": True}},
                    {"http": {"extended": True}}, {"dns": {}}, {"flow": {}}]
    (out / "suricata.yaml").write_text("%YAML 1.1\n---\n" + yaml.safe_dump(cfg, sort_keys=False))
    (out / "policy.rules").write_text("\n".join(rules) + "\n")
    res = subprocess.run([SURICATA, "-c", str(out / "suricata.yaml"), "-r", str(capture), "-S",
                          str(out / "policy.rules"), "-k", "none", "--runmode=single", "--simulate-ips",
                          "-l", str(out), "--set", f"vars.address-groups.HOME_NET={CLIENT_HOME}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return [json.loads(line) for line in (out / "eve.json").read_text().splitlines()]


def per_flow(evs: list[dict]) -> dict[str, dict]:
    """What each inner flow's events say, keyed by its 5-tuple (client side first)."""
    out: dict[str, dict] = {}
    for e in evs:
        if e.get("dest_port") == 6081:   # Suricata's flows of the GENEVE tunnel itself
            continue
        ends = sorted([(ip(e["src_ip"]), e.get("src_port")), (ip(e["dest_ip"]), e.get("dest_port"))])
        f = out.setdefault(f"{e['proto']} {ends}", {})
        if e["event_type"] == "alert":
            a = e["alert"]
            f.setdefault("alerts", []).append((a["action"], a["gid"], a["signature_id"], a["rev"],
                                               a["signature"], a["category"], a["severity"]))
        if "tls" in e and "sni" in e["tls"]:
            f["sni"] = e["tls"]["sni"]
        if "http" in e:
            h = e["http"]
            f["http"] = (h["hostname"], h.get("url"), h.get("http_method"), h.get("protocol"))
        if "dns" in e:
            d = e["dns"]
            q = d["query"][0] if "query" in d else d if d.get("type") == "query" else None
            if q:
                f.setdefault("queries", set()).add((q["id"], q["rrname"], q["rrtype"]))
        if e["event_type"] == "flow":
            f["pkts"] = (e["flow"]["pkts_toserver"], e["flow"]["pkts_toclient"])
            f["proto"] = (e["proto"], e.get("app_proto"))
    return out


@pytest.mark.parametrize("name", CLIENTS)
def test_same_evidence_as_suricata(runs: dict[str, Run], tmp_path: Path, name: str) -> None:
    """Suricata 7 running the very rules of the policy (the catalog's Suricata texts)
    over the same capture: per flow, the same blocked alert (sid, rev, msg, category,
    severity, gid), the same SNI, HTTP request, DNS questions, packet counts and
    app_proto.  Suricata writes a drop alert once per flow here too: after the drop,
    IPS mode drops the flow's packets without alerting again."""
    cp = compile_policy(load_policies(CLIENT_POLICY))
    rules = [o.text for o in cp.catalog if o.layer == "stateful" and o.ident.isdigit()]
    theirs = per_flow(suricata_eve(CAPTURES[name][0], rules, tmp_path / "suricata"))
    mine = per_flow([line["event"] for line in runs[name].lines])
    assert mine == theirs


# --- real consumers ------------------------------------------------------------------------

@dataclass(frozen=True)
class LogEntry:
    """A Network Firewall log line, as the AWS documentation describes it."""

    firewall_name: str
    availability_zone: str
    logged_at: datetime          # event_timestamp: epoch seconds, UTC
    event_type: str
    at: datetime                 # event.timestamp, human readable
    src: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]
    dest: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]
    proto: str
    event: dict


def read_network_firewall_log(path: Path) -> list[LogEntry]:
    """Written from firewall-logging-contents.html (and Suricata's EVE format for `event`)."""
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        assert set(rec) <= {"firewall_name", "availability_zone", "event_timestamp", "aws_category", "event"}
        ev = rec["event"]
        out.append(LogEntry(
            rec["firewall_name"], rec["availability_zone"],
            datetime.fromtimestamp(int(rec["event_timestamp"]), UTC), ev["event_type"],
            datetime.strptime(ev["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z"),
            (ipaddress.ip_address(ev["src_ip"]), ev.get("src_port")),
            (ipaddress.ip_address(ev["dest_ip"]), ev.get("dest_port")), ev["proto"], ev))
    return out


@pytest.mark.parametrize("name", CAPTURES)
def test_aws_reader_reads_every_line(runs: dict[str, Run], name: str) -> None:
    entries = read_network_firewall_log(runs[name].eve)
    assert len(entries) == len(runs[name].lines)
    for e in entries:
        assert e.firewall_name and e.logged_at == e.at.replace(microsecond=0)
        if e.proto in ("TCP", "UDP"):
            assert e.src[1] is not None and e.dest[1] is not None
        assert e.src[0].version == (4 if "." in e.event["src_ip"] else 6)
        assert not (e.src[0].version == 6 and e.src[0].ipv4_mapped)
    # the join users make: each blocked alert's flow, its bytes
    flows = {e.event["flow_id"]: e for e in entries if e.event_type == "flow"}
    for e in entries:
        if e.event_type == "alert":
            f = flows[e.event["flow_id"]].event
            assert {e.src, e.dest} == {(ipaddress.ip_address(f["src_ip"]), f.get("src_port")),
                                       (ipaddress.ip_address(f["dest_ip"]), f.get("dest_port"))}


def jq_run(jq: str, program: str, path: Path, *flags: str) -> str:
    return subprocess.run([jq, *flags, program, str(path)], capture_output=True, text=True, check=True,
                          timeout=60).stdout


@pytest.mark.parametrize("name", CAPTURES)
def test_jq_queries_aws_users_run(jq: str, runs: dict[str, Run], name: str) -> None:
    """The Network Firewall log queries of AWS's analysis posts, in jq: blocked alerts
    by signature, the SNIs and HTTP hosts seen, top talkers by bytes, event_timestamp
    as a date."""
    run = runs[name]
    by_sig = json.loads(jq_run(jq, '[.[] | select(.event.event_type == "alert" and .event.alert.action == "blocked")]'
                                   ' | group_by(.event.alert.signature)'
                                   ' | map({signature: .[0].event.alert.signature, count: length})', run.eve, "-s"))
    want = Counter(e["alert"]["signature"] for e in events(run, "alert") if e["alert"]["action"] == "blocked")
    assert {d["signature"]: d["count"] for d in by_sig} == want
    assert sum(want.values()) == len({e["flow_id"] for e in events(run, "alert")})
    snis = jq_run(jq, 'select(.event.tls.sni != null) | .event.tls.sni', run.eve, "-r").split()
    pcap = CAPTURES[name][0]
    assert set(snis) == {f.last("tls.handshake.extensions_server_name").lower() for f in tshark_frames(pcap)
                         if f.last("tls.handshake.extensions_server_name")}
    hosts = jq_run(jq, 'select(.event.event_type == "http") | .event.http.hostname', run.eve, "-r").split()
    requests = [f.last("http.host").lower() for f in tshark_frames(pcap) if f.f["http.request.method"]]
    assert hosts == [h.rsplit(":", 1)[0] if ":" in h else h for h in requests]
    top = jq_run(jq, '[.[] | select(.event.event_type == "flow")] | group_by(.event.src_ip)'
                     ' | map({ip: .[0].event.src_ip, bytes: (map(.event.flow.bytes_toserver) | add)})'
                     ' | sort_by(-.bytes) | .[0].ip', run.eve, "-s", "-r").strip()
    sent = Counter()
    for c in flows_by_tshark(pcap).values():
        sent[c["src"]] += c["bytes"][0]
    assert ip(top) == sent.most_common(1)[0][0]
    dates = jq_run(jq, '.event_timestamp | tonumber | todate', run.eve, "-r").split()
    assert dates == [datetime.strptime(line["event"]["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
                     .strftime("%Y-%m-%dT%H:%M:%SZ") for line in run.lines]


# --- volume, configuration, errors ---------------------------------------------------------

def test_types_choose_the_events(runs: dict[str, Run], tmp_path: Path) -> None:
    inp, pol = CAPTURES["sample"]
    full = runs["sample"].lines
    only_alerts = run_replay(tmp_path / "a", inp, pol, frozenset({"alert"})).lines
    assert only_alerts == [line for line in full if line["event"]["event_type"] == "alert"]
    only_flows = run_replay(tmp_path / "f", inp, pol, frozenset({"flow"})).lines
    want = [line for line in full if line["event"]["event_type"] == "flow"]
    for line in want:
        line["event"]["flow"]["alerts_logged"] = 0   # no alert event was written this time
    assert only_flows == want
    with pytest.raises(ValueError, match="unknown EVE event types"):
        EveWriter(tmp_path / "x.json", frozenset({"netflow"}), Pipeline(flows=FlowConfig(capacity=4096)))


def test_without_a_policy_nothing_alerts(tmp_path: Path, runs: dict[str, Run]) -> None:
    run = run_replay(tmp_path, SAMPLE, None)
    kinds = Counter(line["event"]["event_type"] for line in run.lines)
    assert "alert" not in kinds and kinds["flow"] == run.stats["flows"]["created"]
    assert all(not e["flow"]["alerted"] and "action" not in e["flow"] for e in events(run, "flow"))
    assert events(run, "tls") == events(runs["sample"], "tls")


def test_unwritable_eve_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"missing/eve\.json: cannot write: No such file"):
        replay(SAMPLE, tmp_path / "out.pcap", eve=tmp_path / "missing" / "eve.json")
    with pytest.raises(CaptureError, match=r"/dev/full: cannot write: No space left"):
        replay(SAMPLE, tmp_path / "out.pcap", eve="/dev/full")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # outputs never half written


def test_a_failed_replay_leaves_no_eve(tmp_path: Path) -> None:
    """A record past libpcap's size limit, after some batches were logged: the replay
    raises and the .part log is removed."""
    data = SAMPLE.read_bytes()
    pos = 24
    for _ in range(50):   # whole records
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    bad = tmp_path / "corrupt.pcap"
    bad.write_bytes(data[:pos] + struct.pack("<IIII", 1_700_000_001, 0, 300_000, 300_000) + bytes(64))
    with pytest.raises(CaptureError, match="corrupt pcap record"):
        replay(bad, tmp_path / "out.pcap", eve=tmp_path / "eve.json", batch_packets=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pcap"]


# --- the per-flow table, against a dict ---------------------------------------------------

ROWS = st.lists(st.tuples(st.integers(1, 12), st.sampled_from([-1, -1, 0, 1, 2]),
                          st.sampled_from([-1, -1, 0, 3]), st.booleans(), st.sampled_from([0, 0, 1, 2, 3])),
                max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(ROWS, st.sets(st.integers(1, 12))), min_size=1, max_size=12))
def test_flow_state_matches_a_dict(batches) -> None:
    """Batches of rows (flow, rule, alert, dropped, app), then flows ending: the events
    listed and the state handed over equal a dict model's; the table starts at 4
    entries so growth and wrap-around deletion are exercised."""
    state = FlowState(4)
    model: dict[int, list] = {}
    for rows, ended in batches:
        n = len(rows)
        cols = list(zip(*rows)) if rows else [()] * 5
        fid, rule, alert, app = (np.array(c, dt) for c, dt in zip(
            (cols[0], cols[1], cols[2], cols[4]), (np.uint64, np.int32, np.int32, np.uint8)))
        verdict = np.array([Verdict.DROP if d else Verdict.PASS for d in cols[3]], np.uint8)
        ev = (np.zeros(3 * n, np.int64), np.zeros(3 * n, np.uint8), np.zeros(3 * n, np.int32))
        state.reserve(n)
        k = eve_mod._select(n, verdict, rule, alert, fid, app, np.full(n, -1, np.int64), state.tab, state.used,
                            True, True, True, True, True, *ev)
        want = []
        for i, (f, r, a, d, ap) in enumerate(rows):
            blocked = r if d else -1
            m = model.setdefault(f, [-1, -1, 0, 0, 0, 0]) if (blocked >= 0 or a >= 0 or ap) else None
            if m is not None and ap and not m[5]:
                m[5] = ap
            for kind, cat in ((eve_mod.K_ALLOWED, a), (eve_mod.K_BLOCKED, blocked)):
                if cat < 0:
                    continue
                slot = 0 if kind == eve_mod.K_BLOCKED else 1
                m[3] += 1
                m[2] += kind == eve_mod.K_BLOCKED
                if m[slot] != cat:
                    m[slot] = cat
                    m[4] += 1
                    want.append((i, kind, cat))
        assert list(zip(*(x[:k].tolist() for x in ev))) == want
        gone = np.array(sorted(ended), np.uint64)
        got = state.take(gone)
        expect = [model.pop(int(f), [-1, -1, 0, 0, 0, 0])[2:] for f in gone]
        assert [list(x) for x in zip(*(g.tolist() for g in got))] == expect
        assert int(state.used[0]) == len(model) == int((state.tab["fid"] != 0).sum())


# --- the cost ------------------------------------------------------------------------------

def test_logging_cost_on_a_million_packets(tmp_path: Path) -> None:
    """bench/traffic's capture: 1 M packets of 4096 mid-stream TCP flows without names.
    Allowed (no policy): EVE writes one flow event per flow.  Blocked (the sample
    allowlist, whose drop_established drops every packet): the worst case for
    per-packet logging, one alert and one flow event per flow and every row looked up
    in the per-flow table.  Rounds alternate with and without EVE in one process; the
    best of each is printed (pytest -s)."""
    cap = make_capture(tmp_path / "traffic.pcap", 1_000_000)
    eve = tmp_path / "eve.json"
    for label, policy in (("allowed", None), ("blocked", compile_policy(load_policies(SAMPLE_POLICY)))):
        replay(cap, "/dev/null", policy=policy, eve=eve)   # warm-up: numba caches, page cache
        wall: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        eve_ns: list[float] = []
        for _ in range(5):
            for with_eve in (False, True):
                t0, c0 = time.perf_counter(), time.process_time()
                d = replay(cap, "/dev/null", policy=policy, eve=eve if with_eve else None).to_dict()
                wall[with_eve].append(d["packets_in"] / (time.perf_counter() - t0))
                cpu[with_eve].append(d["packets_in"] / (time.process_time() - c0))
                if with_eve:
                    eve_ns.append(d["stages"]["eve"]["ns_per_packet"])
        w0, w1, c0, c1 = max(wall[False]), max(wall[True]), max(cpu[False]), max(cpu[True])
        # CPU time too: on a shared machine the wall clock also counts other processes
        print(f"\nEVE cost, 1 M packets, 4096 flows {label}: without {w0:,.0f} packets/s, with {w1:,.0f} "
              f"({w1 / w0:.2f}x); per CPU second {c0:,.0f} and {c1:,.0f} ({c1 / c0:.2f}x); "
              f"eve stage {min(eve_ns)} ns/packet")
        lines = [json.loads(line)["event"] for line in eve.read_text().splitlines()]
        kinds = Counter(e["event_type"] for e in lines)
        assert d["packets_in"] == 1_000_000 and d["flows"]["created"] == 4096
        assert kinds == ({"flow": 4096} if policy is None else {"alert": 4096, "flow": 4096})
        blocked = sum(e["flow"]["pkts_blocked"] for e in lines if e["event_type"] == "flow")
        assert blocked == d["drops_by_stage"].get("policy", 0) == (0 if policy is None else 1_000_000)
