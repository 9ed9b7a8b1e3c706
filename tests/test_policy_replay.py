"""`egressd replay` of the real-client captures under an AWS domain allowlist, judged by tshark.

The policy is what a user would bring: the JSON `aws network-firewall describe-rule-group`
prints for a stateful domain list (ALLOWLIST, TLS_SNI and HTTP_HOST), with HOME_NET the
capturing clients only (10.99.0.1, fd00:99::1).  AWS keeps $EXTERNAL_NET the negation of
the *policy's* HOME_NET, so the policy-level home_net is given too: as a YAML with only
`home_net` next to the JSON, or as a YAML that names the JSON in `aws_rule_group_file`
(the two routes alternate over the captures and must not differ).

The oracle is tshark, which nobody here wrote: it reads each TCP stream of the input
capture and the name its ClientHello or request carries, on the frame that completes
it.  What a user expects of an allowlist (https://docs.aws.amazon.com/network-firewall/
latest/developerguide/stateful-rule-groups-domain-names.html: traffic of the listed
protocols that matches no target is denied; other traffic is not touched by the list):
an allowed name's stream is forwarded whole; a denied name's stream (a name not listed,
or a ClientHello without SNI) is forwarded up to the frame that completes its ClientHello
or request, and that frame and every later frame of the stream are dropped; everything
else (DNS over UDP and TCP) is forwarded.  The packets tshark reads in OUT and DROPPED
must be exactly those.

`egressd policy check` prints the compiled summary of the JSON and the YAML, and names
the file, line or field, and reason of broken files with exit code 2.
"""
from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import PCAPS, egressd

DATA = Path(__file__).resolve().parent / "data" / "policies"
ALLOWLIST = DATA / "clients-allowlist.json"
CAPTURES = ("chromium", "curl-http", "curl-tls", "dns", "openssl-s_client", "python-ssl")
CLIENTS = {"10.99.0.1", "fd00:99::1"}

# every name the captures carry (manifest.json), and whether the allowlist's targets
# (.pkgs.example.com, shop.example.test, py.example.test, chromium.example.test,
# downloads.example.org, files.example.org) allow it; None: a ClientHello without SNI
ALLOWED = {
    "pkgs.example.com": True, "v6.pkgs.example.com": True, "legacy.example.com": False,
    "shop.example.test": True, "v6.shop.example.test": False,
    "py.example.test": True, "v6.py.example.test": False,
    "chromium.example.test": True, "v6.chromium.example.test": False,
    "downloads.example.org": True, "files.example.org": True, "v6.downloads.example.org": False,
    "proxied.example.org": False, "tunnel.example.org": False,
    None: False,
}
NAMES = {
    "chromium": {"chromium.example.test", "v6.chromium.example.test"},
    "curl-http": {"downloads.example.org", "files.example.org", "v6.downloads.example.org",
                  "proxied.example.org", "tunnel.example.org"},
    "curl-tls": {"pkgs.example.com", "legacy.example.com", "v6.pkgs.example.com"},
    "dns": set(),
    "openssl-s_client": {"shop.example.test", "v6.shop.example.test", None},
    "python-ssl": {"py.example.test", "v6.py.example.test", None},
}

FIELDS = ("frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport",
          "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags", "tcp.len", "udp.srcport",
          "udp.dstport", "tcp.stream", "tls.handshake.type", "tls.handshake.extensions_server_name",
          "http.request.method", "http.host")


@dataclass(frozen=True)
class Frame:
    number: int
    key: tuple            # the inner packet: time, addresses, ports, sequence numbers
    stream: int | None    # tshark's tcp.stream (input only)
    client_hello: bool
    sni: str | None
    request: bool
    host: str | None


def tshark_frames(tshark: str, pcap: Path) -> list[Frame]:
    """Every frame, its inner packet's identity (last occurrence of each field: the
    packet inside GENEVE), and the ClientHello / request tshark completes on it."""
    cmd = [tshark, "-r", str(pcap), "-n", "-T", "fields", "-E", "occurrence=l", "-E", "separator=\t",
           "-e", "frame.number", *(a for f in FIELDS for a in ("-e", f))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    frames = []
    for line in out.splitlines():
        num, *vals = line.split("\t")
        v = dict(zip(FIELDS, vals))
        v6 = bool(v["ipv6.src"])
        src, dst = (v["ipv6.src"], v["ipv6.dst"]) if v6 else (v["ip.src"], v["ip.dst"])
        tcp = bool(v["tcp.srcport"])
        ports = (v["tcp.srcport"], v["tcp.dstport"]) if tcp else (v["udp.srcport"], v["udp.dstport"])
        key = (v["frame.time_epoch"], src, dst, *ports, v["tcp.seq_raw"], v["tcp.ack_raw"], v["tcp.flags"],
               v["tcp.len"])
        from_client = src in CLIENTS
        hello = from_client and "1" in v["tls.handshake.type"].split(",")
        request = from_client and bool(v["http.request.method"])
        host = v["http.host"].lower()
        if host.startswith("["):
            host = host[1:host.index("]")]
        elif ":" in host:
            host = host.rsplit(":", 1)[0]
        frames.append(Frame(int(num), key, int(v["tcp.stream"]) if tcp else None, hello,
                            v["tls.handshake.extensions_server_name"].lower() or None, request,
                            host or None))
    return frames


@dataclass
class Replay:
    name: str
    policy: list[Path]
    res: subprocess.CompletedProcess
    stats: dict
    frames: list[Frame]       # the input
    forwarded: list[Frame]
    dropped: list[Frame]


def _replay(tshark: str, tmp: Path, k: int, name: str) -> Replay:
    # alternate the two ways of giving the policy-level home_net
    policy = [DATA / "clients-home.yaml", ALLOWLIST] if k % 2 == 0 else [DATA / "clients.yaml"]
    out, dropped, stats = tmp / f"{name}-out.pcap", tmp / f"{name}-dropped.pcap", tmp / f"{name}-stats.json"
    args = [a for p in policy for a in ("--policy", p)]
    res = egressd("replay", PCAPS / "clients" / f"{name}.pcap", *args, "--out", out, "--dropped", dropped,
                  "--stats", stats, "--flow-capacity", "4096", "--no-progress")
    assert res.returncode == 0, res.stderr
    return Replay(name, policy, res, json.loads(stats.read_text()),
                  tshark_frames(tshark, PCAPS / "clients" / f"{name}.pcap"),
                  tshark_frames(tshark, out), tshark_frames(tshark, dropped))


@pytest.fixture(scope="module")
def replays(tshark: str, tmp_path_factory) -> dict[str, Replay]:
    tmp = tmp_path_factory.mktemp("replay")
    with ThreadPoolExecutor(len(CAPTURES)) as pool:
        runs = list(pool.map(lambda kn: _replay(tshark, tmp, *kn), enumerate(CAPTURES)))
    return {r.name: r for r in runs}


def expected(frames: list[Frame]) -> tuple[list[int], list[int], dict[int, str | None]]:
    """(frames forwarded, frames dropped, each stream's name) as the allowlist says."""
    name_of: dict[int, str | None] = {}
    cut: dict[int, int] = {}           # stream -> the frame that completes its name
    for f in frames:
        if f.stream is None or f.stream in cut:
            continue
        if f.client_hello or f.request:
            name_of[f.stream] = f.sni if f.client_hello else f.host
            cut[f.stream] = f.number
    forwarded, dropped = [], []
    for f in frames:
        s = f.stream
        denied = s in cut and not ALLOWED[name_of[s]] and f.number >= cut[s]
        (dropped if denied else forwarded).append(f.number)
    return forwarded, dropped, name_of


@pytest.mark.parametrize("name", CAPTURES)
def test_allowlist_verdicts_by_tshark(replays: dict[str, Replay], name: str) -> None:
    r = replays[name]
    want_fwd, want_drop, names = expected(r.frames)
    assert set(names.values()) == NAMES[name], "tshark sees the names the manifest lists"
    by_key = {f.key: f.number for f in r.frames}
    assert len(by_key) == len(r.frames), "each input packet is identified by its inner fields"
    got_fwd = [by_key[f.key] for f in r.forwarded]
    got_drop = [by_key[f.key] for f in r.dropped]
    streams = {f.number: f.stream for f in r.frames}

    def show(numbers: set[int]) -> str:
        return ", ".join(f"{n} (stream {streams[n]}: {names.get(streams[n], '-')})" for n in sorted(numbers))

    assert sorted(got_fwd + got_drop) == [f.number for f in r.frames], "every packet exactly once"
    wrongly_dropped = set(got_drop) - set(want_drop)
    wrongly_forwarded = set(got_fwd) - set(want_fwd)
    assert not wrongly_dropped and not wrongly_forwarded, (
        f"{name}: dropped but should be forwarded: {show(wrongly_dropped) or 'none'}; "
        f"forwarded but should be dropped: {show(wrongly_forwarded) or 'none'}")
    s = r.stats
    assert (s["packets_in"], s["packets_forwarded"], s["packets_dropped"]) == \
        (len(r.frames), len(want_fwd), len(want_drop))
    assert s["drops"] == ({"stateful_drop": len(want_drop)} if want_drop else {})
    denied_streams = {st for st, n in names.items() if not ALLOWED[n]}
    allowed_streams = {st for st, n in names.items() if ALLOWED[n]}
    assert s["policy"]["flows_dropped"] == len(denied_streams)
    assert s["policy"]["flows_passed"] == len(allowed_streams)


def test_routes_agree(replays: dict[str, Replay]) -> None:
    """Both ways of giving home_net were used, and the summary line counts what tshark counts."""
    assert {len(r.policy) for r in replays.values()} == {1, 2}
    for r in replays.values():
        s = r.stats
        assert f"forwarded {s['packets_forwarded']}" in r.res.stderr
        assert f"dropped {s['packets_dropped']}" in r.res.stderr


# --- egressd policy check ----------------------------------------------------------------------

def test_policy_check_aws_json() -> None:
    res = egressd("policy", "check", ALLOWLIST)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"sources: {ALLOWLIST}"
    # the group's own HOME_NET is no policy home_net: the default stays
    assert "home_net: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7" in lines
    assert "stateful: 1 groups, 14 rules; rule order default_action_order; default actions none" in lines
    assert any(line.strip().startswith("client-hosts (priority 0, arn:aws:network-firewall:")
               and line.endswith("14 rules, 6 domain patterns") for line in lines)
    assert "nacl: off" in lines and "dns firewall: off" in lines
    assert lines[-1].startswith("compiled: ")


def test_policy_check_yaml() -> None:
    res = egressd("policy", "check", DATA / "clients.yaml")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "home_net: 10.99.0.1/32, fd00:99::1/128" in lines
    assert "stateful: 1 groups, 14 rules; rule order default_action_order; default actions none" in lines
    assert "stateless: 0 groups, 0 rules; default forward, fragments forward" in lines
    assert any(line.startswith("engine: name_wait_packets=") for line in lines)


YAML_BAD_FIELD = """version: 1
home_net: [10.99.0.1/32]
nacl:
  outbound:
    - {rule: 100, action: allow, protocol: tcp, cidr: 0.0.0.0/0, port: 443}
"""
YAML_MISSING_FILE = """version: 1
network_firewall:
  rule_groups:
    - aws_rule_group_file: no-such-group.json
"""
RULES_BAD_KEYWORD = """# two rules, the second outside the subset
drop tls $HOME_NET any -> $EXTERNAL_NET any (tls.sni; content:"bad.example"; endswith; sid:1;)
alert http $HOME_NET any -> $EXTERNAL_NET any (http.uri; content:"/admin"; sid:7;)
"""
DOMAIN_LIST_BAD_LINE = "malware.example\n*.tracker.example\nbad..example\n"


def _json_with(change) -> str:
    data = json.loads(ALLOWLIST.read_text())
    change(data["RuleGroup"]["RulesSource"]["RulesSourceList"])
    return json.dumps(data, indent=2)


BROKEN = {
    # name: (file name, content, where, reason)
    "yaml-unknown-field": ("policy.yaml", YAML_BAD_FIELD, "line 5, nacl.outbound[0].port", "unknown field 'port'"),
    "yaml-missing-rule-group-file": ("policy.yaml", YAML_MISSING_FILE,
                                     "line 4, network_firewall.rule_groups[0].aws_rule_group_file",
                                     "no-such-group.json"),
    "json-target-type": ("group.json", _json_with(lambda l: l.update(TargetTypes=["TLS_SNI", "SNI"])),
                         "RuleGroup.RulesSource.RulesSourceList.TargetTypes[1]", "TLS_SNI"),
    "json-bad-target": ("group.json", _json_with(lambda l: l["Targets"].append("bad..example")),
                        "RuleGroup.RulesSource.RulesSourceList.Targets[6]", "empty label"),
    "json-truncated": ("group.json", ALLOWLIST.read_text()[:200], "line ", "invalid JSON"),
    "suricata-keyword": ("egress.rules", RULES_BAD_KEYWORD, "line 3, sid 7", "http.uri"),
    "domain-list-line": ("blocked.txt", DOMAIN_LIST_BAD_LINE, "line 3", "bad..example"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_policy_check_broken_file(tmp_path: Path, case: str) -> None:
    """Exit 2, nothing on stdout, one line naming the file, the line or field, the reason."""
    name, content, where, reason = BROKEN[case]
    path = tmp_path / name
    path.write_text(content)
    res = egressd("policy", "check", path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"egressd: error: {path}: {where}"), lines[0]
    assert reason in lines[0], lines[0]


def test_bundled_example_policy(tshark: str, tmp_path: Path) -> None:
    """The README's first command: the sample capture under rules/examples/egress-allowlist.yaml
    does what the file says.  tshark reads what was dropped: the look-alike mirror's DNS
    query and its TLS connection from the ClientHello on, nothing else."""
    out, dropped, stats = tmp_path / "out.pcap", tmp_path / "dropped.pcap", tmp_path / "stats.json"
    run = egressd("replay", str(PCAPS / "sample-gwlb.pcap"), "--policy",
                  str(PCAPS.parent / "rules" / "examples" / "egress-allowlist.yaml"),
                  "--out", str(out), "--dropped", str(dropped), "--stats", str(stats))
    assert run.returncode == 0, run.stderr
    report = json.loads(stats.read_text())
    assert report["drops"] == {"dns_firewall_block": 1, "stateful_drop": 13}
    rows = subprocess.run([tshark, "-r", str(dropped), "-T", "fields", "-e", "dns.qry.name",
                           "-e", "tls.handshake.extensions_server_name", "-e", "tcp.srcport",
                           "-e", "tcp.dstport"], capture_output=True, text=True, check=True).stdout
    lines = [line.split("\t") for line in rows.splitlines()]
    assert lines[0][0] == "mirror.example.net"
    assert lines[1][1] == "mirror.example.net"
    conn = {lines[1][2], lines[1][3]}
    assert all({f[2], f[3]} == conn for f in lines[1:])      # one connection, cut at its ClientHello
    kept = subprocess.run([tshark, "-r", str(out), "-T", "fields",
                           "-e", "tls.handshake.extensions_server_name", "-e", "http.host"],
                          capture_output=True, text=True, check=True).stdout
    assert {n for n in kept.replace("\t", "\n").split() if n} == {
        "pkgs.example.com", "cdn.example.com", "v6.example.com", "downloads.example.org"}
