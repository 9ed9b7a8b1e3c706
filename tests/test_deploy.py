"""deploy/: the CloudFormation template (cfn-lint and the facts GWLB depends on), the
systemd unit (systemd-analyze), the sysctl file and README against HOST_SETTINGS, and
setup_interface run for real on a veth inside a network namespace made here."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pyroute2 import NetNS, netns

from egressd.cli import BadInput, _parser
from egressd.geneve.header import GENEVE_PORT
from egressd.hostsetup import GWLB_TARGET_MTU, HOST_SETTINGS, MTU_RANGE, setup_interface

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "egressd.service"
TEMPLATE = DEPLOY / "cloudformation.yaml"
BIN = Path(sys.executable).parent


def _unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in order; systemd allows repeated keys."""
    section, out = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key, value))
    return out


def _unit_values(key: str) -> list[str]:
    return [v for s, k, v in _unit_entries(UNIT.read_text()) if k == key]


def _exec_start() -> list[str]:
    (cmd,) = _unit_values("ExecStart")
    return shlex.split(cmd)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture(scope="module")
def template() -> dict:
    from cfnlint.decode import decode_str

    tpl, errors = decode_str(TEMPLATE.read_text())
    assert not errors
    return tpl


def _user_data(template: dict) -> str:
    data = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    script, variables = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert variables == {"PolicyBase64": {"Fn::Base64": {"Ref": "PolicyYaml"}}}
    return script


# --- CloudFormation ---------------------------------------------------------------

def test_cfn_lint_passes():
    r = subprocess.run([BIN / "cfn-lint", TEMPLATE], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ""


def test_target_group_is_geneve_with_health_on_the_units_port(template):
    res = template["Resources"]
    argv = _exec_start()
    tg = res["TargetGroup"]["Properties"]
    assert (tg["Protocol"], tg["Port"], tg["TargetType"]) == ("GENEVE", GENEVE_PORT, "instance")
    assert tg["HealthCheckProtocol"] == "HTTP"
    assert tg["HealthCheckPort"] == _flag(argv, "--health-port")
    assert tg["HealthCheckPath"] == "/health"
    assert tg["Matcher"] == {"HttpCode": "200"}
    attrs = {a["Key"]: a["Value"] for a in tg["TargetGroupAttributes"]}
    # the two failover attributes must be equal (AWS refuses them otherwise)
    assert attrs["target_failover.on_deregistration"] == attrs["target_failover.on_unhealthy"]
    assert attrs["stickiness.enabled"] == {"Fn::If": ["FiveTuple", "false", "true"]}
    assert attrs["stickiness.type"] == {
        "Fn::If": ["TwoTuple", "source_ip_dest_ip", "source_ip_dest_ip_proto"]}
    # a draining egressd (503) serves on until GWLB has taken it out of rotation,
    # and systemd waits for that drain before it kills anything
    seen_unhealthy_s = tg["HealthCheckIntervalSeconds"] * tg["UnhealthyThresholdCount"]
    drain_s = float(_flag(argv, "--drain-seconds"))
    (stop,) = _unit_values("TimeoutStopSec")
    assert seen_unhealthy_s <= drain_s < int(stop) - 10


def test_gwlb_listener_asg_and_endpoint_service_are_wired(template):
    res = template["Resources"]
    assert res["GatewayLoadBalancer"]["Properties"]["Type"] == "gateway"
    listener = res["Listener"]["Properties"]
    assert listener["LoadBalancerArn"] == {"Ref": "GatewayLoadBalancer"}
    assert listener["DefaultActions"] == [{"Type": "forward",
                                           "TargetGroupArn": {"Ref": "TargetGroup"}}]
    asg = res["AutoScalingGroup"]["Properties"]
    assert asg["TargetGroupARNs"] == [{"Ref": "TargetGroup"}]
    assert asg["HealthCheckType"] == "ELB"
    svc = res["EndpointService"]["Properties"]
    assert svc["GatewayLoadBalancerArns"] == [{"Ref": "GatewayLoadBalancer"}]
    assert "${EndpointService}" in template["Outputs"]["EndpointServiceName"]["Value"]["Fn::Sub"]


def test_security_group_opens_geneve_health_and_metrics_to_the_vpc_only(template):
    argv = _exec_start()
    rules = template["Resources"]["InstanceSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    opened = {(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in rules}
    health, metrics = int(_flag(argv, "--health-port")), int(_flag(argv, "--metrics-port"))
    assert opened == {("udp", GENEVE_PORT, GENEVE_PORT), ("tcp", health, health),
                      ("tcp", metrics, metrics)}
    assert all(r["CidrIp"] == {"Ref": "VpcCidr"} for r in rules)


def test_user_data_installs_exactly_the_repo_unit(template):
    script = _user_data(template)
    unit = re.search(r"<<'UNIT'\n(.*?\n)UNIT\n", script, re.DOTALL).group(1)
    # Fn::Sub leaves ${!NAME} as the literal ${NAME}
    assert unit.replace("${!", "${") == UNIT.read_text()
    policy = re.search(r"> (\S+)\n", script[script.index("PolicyBase64"):]).group(1)
    assert policy == _flag(_exec_start(), "--policy")
    assert "egressd policy check " + policy in script
    rendered = (script.replace("${EgressdPackage}", "egressd==0.1.0")
                .replace("${PolicyBase64}", "cnVsZXM6IFtdCg==").replace("${!", "${"))
    r = subprocess.run(["bash", "-n"], input=rendered, capture_output=True, text=True,
                       timeout=30, check=False)
    assert (r.returncode, r.stderr) == (0, "")


# --- systemd unit -----------------------------------------------------------------

def test_unit_runs_serve_with_the_flags_serve_accepts():
    argv = _exec_start()
    assert argv[:2] == ["/opt/egressd/bin/egressd", "serve"]
    assert argv[argv.index("--setup-interface") + 1] == "${EGRESSD_IFACE}"
    assert "EGRESSD_IFACE=eth0" in _unit_values("Environment")
    # the real `egressd serve` parser takes every flag and value the unit gives it
    args = _parser().parse_args([a.replace("${EGRESSD_IFACE}", "eth0") for a in argv[1:]])
    assert args.command == "serve"
    assert (args.health_port, args.metrics_port, args.workers) == (8080, 9100, 2)
    assert args.policy == ["/etc/egressd/policy.yaml"] and args.drain_seconds == 25
    assert args.setup_interface == "eth0"


def test_unit_signals_restart_and_capabilities():
    assert _unit_values("Type") == ["simple"]
    assert _unit_values("Restart") == ["on-failure"]
    assert _unit_values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert _unit_values("KillSignal") == ["SIGTERM"]
    assert _unit_values("KillMode") == ["mixed"]
    assert _unit_values("RestartPreventExitStatus") == ["2"]  # EXIT_BAD_INPUT
    caps = {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(_unit_values("AmbientCapabilities")[0].split()) == caps
    assert set(_unit_values("CapabilityBoundingSet")[0].split()) == caps
    # /proc/sys must stay writable for --setup-interface's sysctls
    assert _unit_values("ProtectKernelTunables") == []


def _verifiable_unit(tmp_path: Path, text: str) -> Path:
    # verify checks that ExecStart's program exists: point it at this install's
    path = tmp_path / "egressd.service"
    path.write_text(text.replace("/opt/egressd/bin/egressd", str(BIN / "egressd")))
    return path


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    path = _verifiable_unit(tmp_path, UNIT.read_text())
    r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True,
                       timeout=60, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    # and it does complain about a unit with a mistake in it
    broken = _verifiable_unit(tmp_path, UNIT.read_text().replace("KillMode=mixed", "KillMode=mix"))
    r = subprocess.run(["systemd-analyze", "verify", broken], capture_output=True, text=True,
                       timeout=60, check=False)
    assert "kill mode" in r.stderr


def test_systemd_sandbox_exposure_stays_low(tmp_path):
    path = _verifiable_unit(tmp_path, UNIT.read_text())
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=30",
                        "--no-pager", path], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    level = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout).group(1))
    assert level <= 3.0


# --- host settings: one set of numbers ----------------------------------------------

def test_sysctl_file_matches_host_settings():
    conf = {}
    for line in (DEPLOY / "sysctl.d" / "90-egressd.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            conf[key.strip()] = int(value)
    assert conf == HOST_SETTINGS
    # every key is one this kernel has (host namespace)
    for key in conf:
        assert Path("/proc/sys", *key.split(".")).is_file(), key


def test_readme_table_carries_host_settings():
    readme = (DEPLOY / "README.md").read_text()
    for key, value in {**HOST_SETTINGS, "MTU": GWLB_TARGET_MTU}.items():
        assert re.search(rf"^\| `?{re.escape(key)}`? \| {value} \|", readme, re.MULTILINE), key


# --- setup_interface, for real, in a network namespace --------------------------------

RUN = """
import json, sys
from egressd.cli import BadInput
from egressd.hostsetup import setup_interface
try:
    print(json.dumps(setup_interface(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
except BadInput as e:
    sys.exit(f"BadInput: {e}")
"""


@pytest.fixture
def veth_ns():
    """A fresh network namespace holding a veth pair va <-> vb (both down, MTU 1500)."""
    name = f"egressd-t-{uuid.uuid4().hex[:8]}"
    ns = NetNS(name)
    try:
        ns.link("add", ifname="va", kind="veth", peer={"ifname": "vb"})
        yield name, ns
    finally:
        ns.close()
        netns.remove(name)


@pytest.fixture
def proc_root(tmp_path):
    """A stand-in for /proc/sys: the host's own global values are never touched."""
    seeded = {key: 1000 for key in HOST_SETTINGS}
    seeded["net.core.wmem_max"] = 2 * HOST_SETTINGS["net.core.wmem_max"]
    for key, value in seeded.items():
        path = tmp_path.joinpath(*key.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return tmp_path, seeded


def _sysctls(root: Path) -> dict[str, int]:
    return {key: int(root.joinpath(*key.split(".")).read_text()) for key in HOST_SETTINGS}


def _in_ns(name: str, iface: str, mtu: int, root: Path, *prefix: str):
    return subprocess.run(["ip", "netns", "exec", name, *prefix, sys.executable, "-c", RUN,
                           iface, str(mtu), str(root)],
                          capture_output=True, text=True, timeout=60, check=False)


def _link(ns: NetNS, name: str, ifname: str) -> tuple[int, bool, dict]:
    msg = ns.link("get", index=ns.link_lookup(ifname=ifname)[0])[0]
    (ip_json,) = json.loads(subprocess.run(["ip", "-n", name, "-j", "link", "show", ifname],
                                           capture_output=True, text=True, check=True).stdout)
    return msg.get_attr("IFLA_MTU"), bool(msg["flags"] & 1), ip_json  # 1: IFF_UP


def test_setup_interface_sets_mtu_up_and_raises_sysctls(veth_ns, proc_root):
    name, ns = veth_ns
    root, seeded = proc_root
    r = _in_ns(name, "va", GWLB_TARGET_MTU, root)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    mtu, up, ip_json = _link(ns, name, "va")
    assert (mtu, up) == (GWLB_TARGET_MTU, True)
    assert ip_json["mtu"] == GWLB_TARGET_MTU and "UP" in ip_json["flags"]
    assert report["mtu"] == {"old": 1500, "new": GWLB_TARGET_MTU}
    # raised to HOST_SETTINGS, except wmem_max, which the host had set higher
    want = {**HOST_SETTINGS, "net.core.wmem_max": seeded["net.core.wmem_max"]}
    assert _sysctls(root) == want
    assert {k: v for k, v in report.items() if k != "mtu"} == {
        key: {"old": seeded[key], "new": want[key]} for key in HOST_SETTINGS}
    # the peer is untouched
    assert _link(ns, name, "vb")[:2] == (1500, False)


def test_setup_interface_without_cap_net_admin_changes_nothing(veth_ns, proc_root):
    name, ns = veth_ns
    root, seeded = proc_root
    r = _in_ns(name, "va", GWLB_TARGET_MTU, root, "setpriv", "--bounding-set=-net_admin")
    assert r.returncode == 1
    assert "BadInput: --setup-interface va: setting the MTU needs root or CAP_NET_ADMIN" in r.stderr
    assert _link(ns, name, "va")[:2] == (1500, False)
    assert _sysctls(root) == seeded


def test_setup_interface_refuses_an_unwritable_sysctl_before_touching_the_link(veth_ns,
                                                                              proc_root):
    name, ns = veth_ns
    root, seeded = proc_root
    root.joinpath("net", "core", "rmem_max").chmod(0o444)
    # without DAC override root obeys file modes, as a CAP_NET_ADMIN-only service would
    r = _in_ns(name, "va", GWLB_TARGET_MTU, root, "setpriv",
               "--bounding-set=-dac_override,-dac_read_search")
    assert r.returncode == 1
    assert "BadInput: sysctl net.core.rmem_max:" in r.stderr and "not writable" in r.stderr
    assert _link(ns, name, "va")[:2] == (1500, False)
    assert _sysctls(root) == seeded


def test_setup_interface_bad_input(proc_root):
    """In the host's namespace, so every call names an interface that does not exist:
    were a check to come too late, the call fails on that, not on the host's links."""
    root, seeded = proc_root
    missing = f"nx{uuid.uuid4().hex[:8]}"
    with pytest.raises(BadInput, match=f"--setup-interface {missing}: no such interface"):
        setup_interface(missing, proc_root=root)
    for mtu in (MTU_RANGE[0] - 1, MTU_RANGE[1] + 1):
        with pytest.raises(BadInput, match=f"MTU {mtu} out of range 1568-9001"):
            setup_interface(missing, mtu, proc_root=root)
    backlog = root / "net" / "core" / "netdev_max_backlog"
    backlog.unlink()
    with pytest.raises(BadInput, match="sysctl net.core.netdev_max_backlog: .* does not exist"):
        setup_interface(missing, proc_root=root)
    backlog.write_text("1000\n")
    assert _sysctls(root) == seeded
