"""egressd against Suricata 7 itself, on an AWS Network Firewall domain allowlist.

The policy is what an AWS user has: the `describe-rule-group` JSON of a domain list
(TLS_SNI and HTTP_HOST, ALLOWLIST, HOME_NET the capture's client) and the
`describe-firewall-policy` JSON around it (tests/data/aws/differential-*.json), in two
set-ups:

- `action_order`: DEFAULT_ACTION_ORDER, no default action.  Suricata runs exactly the
  rules AWS documents generating for the list (checked below against the examples of
  https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-examples.html,
  "Stateful rules examples: domain list rules"), taken from the compiled policy's
  catalog, i.e. as rules/aws.py renders them.
- `strict`: STRICT_ORDER with aws:drop_established.  AWS does not publish the rule
  behind a default action: Suricata gets the list's rules plus DROP_ESTABLISHED below,
  which Suricata's action order (pass first) places after every pass, as strict order
  places the default action after every rule.

Both engines read the same GWLB captures: every real-client capture in pcaps/clients/
and Suricata's own split-ClientHello capture (tls-client-hello-frag-01, wrapped here as
GWLB sends it; its client becomes HOME_NET).  Suricata decodes the GENEVE itself; with
`--simulate-ips` and EVE drop events for every dropped packet, a drop event carrying
`pcap_cnt` names the outer packet dropped.  egressd runs the Pipeline batch by batch
over CaptureReader, the policy loaded by rules.load and compiled by rules.compile.

What each engine should drop is computed from tshark, independently of both: per
connection, who opened it, the frame that completes its ClientHello or HTTP request
(`tls.handshake.type == 1`, `http.request.method`), the earlier segments holding part
of it (`tcp.reassembled_in`), and the name in it, judged against the fixture's targets.

- egressd: an allowed connection is forwarded whole; a denied one is dropped from the
  packet that completes its ClientHello or request, whether that came in one segment
  or several (the segments before it are forwarded).
- Suricata 7.0.10, measured: the same under action order, split ClientHellos included
  (`drop tls ... ssl_state:client_hello` does not match before the ClientHello is
  complete).  Under strict order, aws:drop_established also drops each packet the
  client sends after the handshake until a rule decides: the first segments of a split
  ClientHello, which an allowed connection then lacks; the divergence egressd has on
  purpose (issue 5).  And Suricata runs its `drop http` rule on a CONNECT request only
  when the flow ends, forwarding the request (and, under action order, the answer).
- Everything else (whole ClientHellos and requests, DNS) the two engines drop alike,
  packet by packet, and where a Suricata rule fires egressd names the same rule.

`pytest -s` prints per capture and set-up: packets, packets each engine dropped, and
packets where they differ, and how many of those the two exceptions above explain.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import dpkt
import pytest
import yaml

from conftest import CORPUS, PCAPS, REPO
from gwlb import wrap, write_pcap

from egressd.engine.flows import FlowConfig
from egressd.engine.pcapio import CaptureReader
from egressd.engine.pipeline import Pipeline
from egressd.engine.reasons import Verdict
from egressd.rules.compile import CompiledPolicy, compile_policy
from egressd.rules.load import load_policies

DATA = REPO / "tests" / "data" / "aws"
SURICATA = "/usr/bin/suricata"
SURICATA_YAML = Path("/etc/suricata/suricata.yaml")   # the Debian package's configuration
CLIENT_HOME = ["10.99.0.1/32", "fd00:99::1/128"]       # pcaps/README.md, "Real clients"
FRAG = CORPUS / "suricata-verify" / "tls_tls-client-hello-frag-01" / "dump_mtu300.pcap"
CAPTURES = {**{p.name: (p, CLIENT_HOME) for p in sorted((PCAPS / "clients").glob("*.pcap"))},
            "tls-client-hello-frag-01": (FRAG, ["10.20.0.14/32"])}
SETUPS = {
    "action_order": ("differential-allowlist.json", "differential-policy.json"),
    "strict": ("differential-allowlist-strict.json", "differential-policy-strict.json"),
}
# aws:drop_established "drops only the packets that are in established connections from
# client to server ... Packets from established connections from the server to the client
# are passed"; for UDP a connection is established "only after seeing traffic from both
# sides" (https://docs.aws.amazon.com/network-firewall/latest/developerguide/suricata-rule-evaluation-order.html,
# "Strict evaluation order"; that page also says that for UDP and ICMP it "drops all
# packets", which no reading of `established` gives).  AWS does not publish its rule;
# this one is ours.
DEFAULT_SID = 999999
DROP_ESTABLISHED = ('drop ip any any -> any any (msg:"aws:drop_established"; '
                    f"flow:established, to_server; sid:{DEFAULT_SID}; rev:1;)")
BATCH = 16   # small batches: ClientHello segments cross batch boundaries

# The generated rules of the documentation's "HTTP allow list" and "TLS allow list"
# examples (suricata-examples.html), with {name} and {sid} for the example's own.
DOC_TLS_DOMAIN = ('pass tls $HOME_NET any -> $EXTERNAL_NET any (ssl_state:client_hello; tls.sni; '
                  'dotprefix; content:"{name}"; nocase; endswith; msg:"matching TLS allowlisted '
                  'FQDNs"; priority:1; flow:to_server, established; sid:{sid}; rev:1;)')
DOC_TLS_EXACT = ('pass tls $HOME_NET any -> $EXTERNAL_NET any (ssl_state:client_hello; tls.sni; '
                 'content:"{name}"; startswith; nocase; endswith; msg:"matching TLS allowlisted '
                 'FQDNs"; priority:1; flow:to_server, established; sid:{sid}; rev:1;)')
DOC_TLS_DROP = ('drop tls $HOME_NET any -> $EXTERNAL_NET any (msg:"not matching any TLS allowlisted '
                'FQDNs"; priority:1; ssl_state:client_hello; flow:to_server, established; sid:{sid}; '
                'rev:1;)')
DOC_HTTP_DOMAIN = ('pass http $HOME_NET any -> $EXTERNAL_NET any (http.host; dotprefix; '
                   'content:"{name}"; endswith; msg:"matching HTTP allowlisted FQDNs"; priority:1; '
                   'flow:to_server, established; sid:{sid}; rev:1;)')
DOC_HTTP_EXACT = ('pass http $HOME_NET any -> $EXTERNAL_NET any (http.host; content:"{name}"; '
                  'startswith; endswith; msg:"matching HTTP allowlisted FQDNs"; priority:1; '
                  'flow:to_server, established; sid:{sid}; rev:1;)')
DOC_HTTP_DROP = ('drop http $HOME_NET any -> $EXTERNAL_NET any (http.header_names; content:"|0d 0a|"; '
                 'startswith; msg:"not matching any HTTP allowlisted FQDNs"; priority:1; '
                 'flow:to_server, established; sid:{sid}; rev:1;)')

TABLE: list[tuple] = []


# --- the policy ---------------------------------------------------------------------------

def rule_group(setup: str) -> dict:
    return json.loads((DATA / SETUPS[setup][0]).read_text())


def targets() -> list[str]:
    return rule_group("action_order")["RuleGroup"]["RulesSource"]["RulesSourceList"]["Targets"]


def allowed(name: str | None) -> bool:
    """A target names `name`: "abc.example.com" only itself, ".example.com" the name and
    its subdomains; case-insensitive (API_RulesSourceList)."""
    if not name:
        return False
    name = name.lower().rstrip(".")
    return any(name == t.lstrip(".") or (t.startswith(".") and name.endswith(t))
               for t in (t.lower() for t in targets()))


@cache
def compiled(setup: str, home: tuple[str, ...], folder: Path) -> CompiledPolicy:
    """The set-up's files (HOME_NET rewritten to `home` if it is not the clients'),
    loaded and compiled as `egressd replay --policy ...` would."""
    files = [DATA / n for n in SETUPS[setup]]
    if list(home) != CLIENT_HOME:
        rewritten = []
        for path in files:
            doc = json.loads(path.read_text())
            ip_sets = (doc["RuleGroup"]["RuleVariables"]["IPSets"] if "RuleGroup" in doc
                       else doc["FirewallPolicy"]["PolicyVariables"]["RuleVariables"])
            ip_sets["HOME_NET"]["Definition"] = list(home)
            rewritten.append(folder / f"{setup}-{'-'.join(home).replace('/', '_')}-{path.name}")
            rewritten[-1].write_text(json.dumps(doc))
        files = rewritten
    return compile_policy(load_policies([str(f) for f in files]))


def rule_texts(setup: str, folder: Path) -> list[str]:
    """The Suricata rules of the set-up's domain list, as egressd's catalog holds them."""
    cp = compiled(setup, tuple(CLIENT_HOME), folder)
    group = rule_group(setup)["RuleGroupResponse"]["RuleGroupName"]
    return [o.text for o in cp.catalog if o.layer == "stateful" and o.group == group]


# --- Suricata -----------------------------------------------------------------------------

@cache
def suricata_config(folder: Path) -> Path:
    """Debian's suricata.yaml with EVE logging alerts and every dropped packet."""
    cfg = yaml.safe_load(SURICATA_YAML.read_text())
    eve = next(o["eve-log"] for o in cfg["outputs"] if "eve-log" in o)
    eve["types"] = [{"alert": {"tagged-packets": False}}, {"drop": {"alerts": True, "flows": "all"}}]
    path = folder / "suricata.yaml"
    path.write_text("%YAML 1.1\n---\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def suricata_command(config: Path, capture: Path, rules: Path, out: Path,
                     home: list[str]) -> list[str]:
    return [SURICATA, "-c", str(config), "-r", str(capture), "-S", str(rules), "-k", "none",
            "--runmode=single", "--simulate-ips", "-l", str(out),
            "--set", f"vars.address-groups.HOME_NET=[{','.join(home)}]"]


@dataclass
class SuricataRun:
    dropped: set[int]                      # outer packet numbers, from 1
    blocked: dict[int, set[int]]           # packet -> sids of its `blocked` alerts
    packets: int
    rules_loaded: int


def run_suricata(capture: Path, rules: list[str], home: list[str], folder: Path,
                 out: Path) -> SuricataRun:
    out.mkdir(parents=True)
    rules_file = out / "allowlist.rules"
    rules_file.write_text("\n".join(rules) + "\n")
    res = subprocess.run(suricata_command(suricata_config(folder), capture, rules_file, out, home),
                         capture_output=True, text=True, timeout=120)
    log = (out / "suricata.log").read_text() if (out / "suricata.log").exists() else ""
    assert res.returncode == 0, f"suricata failed ({res.returncode}): {res.stdout}{res.stderr}{log}"
    read = re.search(r"read 1 file, (\d+) packets", res.stdout + res.stderr + log)
    loaded = re.search(r"(\d+) rules successfully loaded, (\d+) rules failed", log)
    assert read and loaded and loaded.group(2) == "0", res.stdout + res.stderr + log
    dropped: set[int] = set()
    blocked: dict[int, set[int]] = {}
    for line in (out / "eve.json").read_text().splitlines():
        ev = json.loads(line)
        if ev["event_type"] == "drop" and "pcap_cnt" in ev:
            dropped.add(ev["pcap_cnt"])
        elif ev["event_type"] == "alert" and ev["alert"]["action"] == "blocked":
            n = ev["tunnel"]["pcap_cnt"] if "tunnel" in ev else ev["pcap_cnt"]
            blocked.setdefault(n, set()).add(ev["alert"]["signature_id"])
    return SuricataRun(dropped, blocked, int(read.group(1)), int(loaded.group(1)))


# --- egressd ------------------------------------------------------------------------------

@dataclass
class EgressdRun:
    dropped: set[int]
    rule: dict[int, str]                   # dropped packet -> "layer:ident" of its rule
    packets: int


def run_egressd(capture: Path, cp: CompiledPolicy) -> EgressdRun:
    pipe = Pipeline(flows=FlowConfig(capacity=4096), policy=cp)
    dropped: set[int] = set()
    rule: dict[int, str] = {}
    n = 0
    with CaptureReader(capture, batch_packets=BATCH, extra_bytes=pipe.extra_bytes) as reader:
        for b in reader:
            pipe.process(b, reader.extra_base)
            for i in range(b.n):
                assert b.verdict[i] in (Verdict.PASS, Verdict.DROP), (n + i + 1, b.verdict[i])
                if b.verdict[i] == Verdict.DROP:
                    o = cp.catalog[b.rule[i]]
                    dropped.add(n + i + 1)
                    rule[n + i + 1] = f"{o.layer}:{o.ident}"
            n += b.n
    pipe.finish()
    return EgressdRun(dropped, rule, n)


# --- the expectation, from tshark -----------------------------------------------------------

@dataclass
class Flow:
    frames: list[int] = field(default_factory=list)
    client: set[int] = field(default_factory=set)      # frames from the side that opened it
    kind: str = ""                         # "tls" / "http": it carries a ClientHello / request
    message: int = 0                       # the frame that completes the ClientHello / request
    segments: list[int] = field(default_factory=list)   # earlier frames holding part of it
    name: str | None = None
    method: str = ""

    @property
    def split(self) -> bool:
        return bool(self.segments)

    @property
    def allowed(self) -> bool:
        return allowed(self.name)

    @property
    def late_connect(self) -> bool:
        """A denied CONNECT: Suricata runs its `drop http` rule only when the flow ends."""
        return self.method == "CONNECT" and not self.allowed

    def label(self) -> str:
        verdict = ("allowed" if self.allowed else "denied") if self.kind else "not judged"
        return (f"{self.method or self.kind or 'other'} {self.name or '(no name)'} ({verdict}), "
                f"frames {self.frames[0]}-{self.frames[-1]}"
                + (f", split {self.segments} + {self.message}" if self.split else
                   f", message {self.message}" if self.kind else ""))


TSHARK_FIELDS = ("frame.number", "ip.src", "ipv6.src", "tcp.stream", "udp.stream",
                 "tcp.reassembled_in", "tls.handshake.type",
                 "tls.handshake.extensions_server_name", "http.request.method", "http.host")


@cache
def tshark_flows(capture: Path) -> tuple[list[Flow], int]:
    """The capture's connections as tshark sees them (two passes, so that earlier
    segments know the frame they are reassembled in), and its packet count."""
    cmd = ["tshark", "-2", "-r", str(capture), "-T", "fields", "-E", "occurrence=a",
           "-E", "aggregator=,", "-o", "tcp.desegment_tcp_streams:TRUE",
           "-o", "tls.desegment_ssl_records:TRUE"]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    rows = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    flows: dict[tuple, Flow] = {}
    opener: dict[tuple, str] = {}
    parts: dict[int, list[int]] = {}       # completing frame -> earlier segments
    count = 0
    for line in rows.stdout.splitlines():
        frame, ip4, ip6, tcp_stream, udp_stream, reassembled_in, hs_type, sni, method, host = \
            (line.split("\t") + [""] * 10)[:10]
        count += 1
        n = int(frame)
        # GENEVE's outer IPv4 and UDP come first: the inner ones last
        src = ip6 or ip4.split(",")[-1]
        udp = udp_stream.split(",")
        key = (("tcp", tcp_stream) if tcp_stream else ("udp", udp[-1]) if len(udp) > 1
               else ("other", n))
        flow = flows.setdefault(key, Flow())
        flow.frames.append(n)
        if opener.setdefault(key, src) == src:
            flow.client.add(n)
        if reassembled_in:
            parts.setdefault(int(reassembled_in.split(",")[0]), []).append(n)
        if not flow.kind and "1" in hs_type.split(","):
            flow.kind, flow.message, flow.name = "tls", n, sni.split(",")[0] or None
        elif not flow.kind and method:
            # the Host without its port, as Suricata's http.host holds it
            flow.kind, flow.message, flow.method = "http", n, method
            flow.name = re.sub(r":\d+$", "", host) or None
    for flow in flows.values():
        if flow.kind:
            flow.segments = sorted(parts.get(flow.message, []))
    return list(flows.values()), count


def expected(flow: Flow, engine: str, setup: str) -> set[int]:
    """What `engine` should drop of a TLS or HTTP connection."""
    if engine == "egressd":
        return set() if flow.allowed else {f for f in flow.frames if f >= flow.message}
    # Suricata decides where its rules match: at the message, or at the flow's end for
    # a denied CONNECT; from there a drop rule drops the rest of the flow.
    decided = flow.frames[-1] if flow.late_connect else flow.message
    drops = set() if flow.allowed else {f for f in flow.frames if f >= decided}
    if setup == "strict":
        # until then, aws:drop_established takes each packet the client sends once the
        # handshake (the first three packets) is over
        drops |= {f for f in flow.frames[3:] if f in flow.client and f < decided}
    return drops


# --- both engines, once per capture and set-up -----------------------------------------------

@dataclass
class Outcome:
    flows: list[Flow]
    packets: int
    suricata: SuricataRun
    egressd: EgressdRun


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    assert shutil.which("tshark"), "tshark is required (apt-get install tshark)"
    assert Path(SURICATA).exists(), "Suricata 7 is required (bookworm-backports; .ci/run)"
    return tmp_path_factory.mktemp("suricata-differential")


@pytest.fixture(scope="module")
def outcome(folder: Path):
    done: dict[tuple[str, str], Outcome] = {}

    def get(setup: str, capture: str) -> Outcome:
        if (setup, capture) not in done:
            path, home = CAPTURES[capture]
            if path == FRAG:
                path = wrapped(path, folder)
            flows, packets = tshark_flows(path)
            rules = rule_texts(setup, folder) + ([DROP_ESTABLISHED] if setup == "strict" else [])
            sur = run_suricata(path, rules, home, folder, folder / f"{setup}-{capture}")
            eg = run_egressd(path, compiled(setup, tuple(home), folder))
            done[setup, capture] = Outcome(flows, packets, sur, eg)
        return done[setup, capture]

    yield get
    if TABLE:
        print("\n\nSuricata 7 vs egressd, AWS domain allowlist: packets dropped")
        print(f"{'capture':26} {'set-up':13} {'packets':>7} {'suricata':>8} {'egressd':>7} "
              f"{'differ':>6} {'explained':>9}")
        for row in TABLE:
            print("{:26} {:13} {:7} {:8} {:7} {:6} {:9}".format(*row))


def wrapped(path: Path, folder: Path) -> Path:
    """A plain Ethernet capture wrapped in GWLB GENEVE, packet by packet."""
    with open(path, "rb") as f:
        pkts = [(round(float(ts) * 1e9), bytes(dpkt.ethernet.Ethernet(frame).data))
                for ts, frame in dpkt.pcap.UniversalReader(f)]
    return write_pcap(folder / path.name, [wrap(ip) for _, ip in pkts], [t for t, _ in pkts])


# --- the tests ------------------------------------------------------------------------------

def test_suricata_gets_the_rules_aws_documents_for_the_list(folder: Path) -> None:
    """For the fixture's targets rules/aws.py renders the documented rule of each type
    and target, then the documented drop rule of each type, sids from 1; both set-ups
    hold the same list for the same clients."""
    first = rule_group("action_order")["RuleGroup"]
    for setup in SETUPS:
        group = rule_group(setup)["RuleGroup"]
        assert group["RulesSource"] == first["RulesSource"]
        assert group["RuleVariables"]["IPSets"]["HOME_NET"]["Definition"] == CLIENT_HOME
        policy = json.loads((DATA / SETUPS[setup][1]).read_text())["FirewallPolicy"]
        assert policy["PolicyVariables"]["RuleVariables"]["HOME_NET"]["Definition"] == CLIENT_HOME
        assert first["RulesSource"]["RulesSourceList"]["TargetTypes"] == ["TLS_SNI", "HTTP_HOST"]
        want = [(domain if t.startswith(".") else exact).format(name=t, sid="N")
                for domain, exact in ((DOC_TLS_DOMAIN, DOC_TLS_EXACT),
                                      (DOC_HTTP_DOMAIN, DOC_HTTP_EXACT)) for t in targets()]
        want += [DOC_TLS_DROP.format(sid="N"), DOC_HTTP_DROP.format(sid="N")]
        texts = rule_texts(setup, folder)
        assert [re.sub(r"sid:\d+;", "sid:N;", r) for r in texts] == want
        assert [int(re.search(r"sid:(\d+);", r).group(1)) for r in texts] == \
            list(range(1, len(want) + 1))


@pytest.mark.parametrize("capture", list(CAPTURES))
@pytest.mark.parametrize("setup", list(SETUPS))
def test_per_packet_verdicts_against_suricata(setup: str, capture: str, outcome, folder) -> None:
    o = outcome(setup, capture)
    sur, eg = o.suricata, o.egressd
    differ = sur.dropped ^ eg.dropped
    explained = 0
    problems = []
    for flow in o.flows:
        frames = set(flow.frames)
        got = {"suricata": sur.dropped & frames, "egressd": eg.dropped & frames}
        rules = {"egressd": eg.rule, "suricata": {k: sorted(v) for k, v in sur.blocked.items()}}
        wrong = [f"{flow.label()}: {engine} drops {sorted(drops)}, expected "
                 f"{sorted(expected(flow, engine, setup))}; rules "
                 f"{ {k: v for k, v in sorted(rules[engine].items()) if k in frames} }"
                 for engine, drops in got.items()
                 if flow.kind and drops != expected(flow, engine, setup)]
        # where Suricata's rule fires, egressd names the same rule (but a CONNECT, which
        # egressd judges at the request)
        both = set() if flow.late_connect else got["suricata"] & got["egressd"] & set(sur.blocked)
        for k in sorted(both):
            ident = eg.rule[k].split(":")[1]
            if int(DEFAULT_SID if ident == "default" else ident) not in sur.blocked[k]:
                wrong.append(f"{flow.label()}: packet {k} dropped by sid {sorted(sur.blocked[k])} "
                             f"in Suricata, by {eg.rule[k]} in egressd")
        if flow.split or flow.late_connect:
            explained += 0 if wrong else len(differ & frames)
        elif got["suricata"] != got["egressd"]:
            wrong.append(f"{flow.label()}: Suricata drops {sorted(got['suricata'])}, "
                         f"egressd {sorted(got['egressd'])}")
        problems += wrong
    TABLE.append((capture, setup, o.packets, len(sur.dropped), len(eg.dropped), len(differ),
                  explained))
    counts = (f"{capture} [{setup}]: {o.packets} packets, Suricata dropped "
              f"{len(sur.dropped)}, egressd {len(eg.dropped)}, they differ on {len(differ)}, "
              f"{explained} explained (split ClientHello, CONNECT)")
    assert sur.packets == eg.packets == o.packets, counts
    assert sur.rules_loaded == len(rule_texts(setup, folder)) + (setup == "strict"), counts
    assert set(sur.blocked) <= sur.dropped, counts   # the drop log misses no blocked alert
    assert not problems, counts + "\n" + "\n".join(problems)
