"""Suricata 7, the engine under AWS Network Firewall, as a baseline.

It reads the same GWLB capture (`-r`, its GENEVE decoder on port 6081), in IPS mode
without a network (`--simulate-ips`), with the rules AWS generates for the same domain
allowlist (rules/aws.py renders them; they are taken from the compiled policy's
catalog), in the `single` run mode (one worker thread, as egressd's one core) or
`autofp` (a reader thread feeding a worker per core).  The configuration is ours and
minimal: no EVE log, stats at exit, flow and stream memory caps big enough that a
million flows never push it into emergency mode (which would skip work).

Its rate is its own "time elapsed" (from engine start to the capture's end: rule
loading, which takes minutes for 100 k domains, is reported apart); its packet count
and drops are its own counters (decoder.pkts, ips.blocked).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from egressd.rules.compile import CompiledPolicy

SURICATA = "suricata"
GENEVE_PORT = 6081


def config(home_net: list[str]) -> dict:
    return {
        "vars": {"address-groups": {"HOME_NET": f"[{','.join(home_net)}]",
                                    "EXTERNAL_NET": "!$HOME_NET"},
                 "port-groups": {"HTTP_PORTS": "80", "GENEVE_PORTS": str(GENEVE_PORT)}},
        "decoder": {"geneve": {"enabled": True, "ports": str(GENEVE_PORT)}},
        "app-layer": {"protocols": {"tls": {"enabled": "yes", "detection-ports": {"dp": 443}},
                                    "http": {"enabled": "yes"},
                                    "dns": {"udp": {"enabled": "yes"}, "tcp": {"enabled": "yes"}},
                                    "quic": {"enabled": "yes"}}},
        "flow": {"memcap": "4gb", "hash-size": 1 << 20, "prealloc": 100_000},
        "stream": {"memcap": "4gb", "reassembly": {"memcap": "4gb"}},
        "stats": {"enabled": True, "interval": 100_000},
        "outputs": [{"stats": {"enabled": True, "filename": "stats.log", "totals": True,
                               "threads": False}}],
        "logging": {"default-log-level": "notice",
                    "outputs": [{"console": {"enabled": False}},
                                {"file": {"enabled": True, "level": "info",
                                          "filename": "suricata.log"}}]},
    }


def rules(compiled: CompiledPolicy, group: str) -> list[str]:
    """The Suricata text of the stateful rules of rule group `group`."""
    return [o.text for o in compiled.catalog if o.layer == "stateful" and o.group == group]


def version() -> str | None:
    if not shutil.which(SURICATA):
        return None
    res = subprocess.run([SURICATA, "-V"], capture_output=True, text=True, timeout=30)
    m = re.search(r"version (\S+)", res.stdout)
    return m.group(1) if m else "unknown"


def run(capture: Path, rules_file: Path, home_net: list[str], runmode: str, workdir: Path) -> dict:
    """One Suricata run; what it counted and how long it took."""
    out = workdir / f"suricata-{runmode}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = out / "suricata.yaml"
    cfg.write_text("%YAML 1.1\n---\n" + yaml.safe_dump(config(home_net), sort_keys=False))
    cmd = [SURICATA, "-c", str(cfg), "-r", str(capture), "-S", str(rules_file), "-k", "none",
           "--runmode", runmode, "--simulate-ips", "-l", str(out)]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    log = (out / "suricata.log").read_text() if (out / "suricata.log").exists() else ""
    elapsed = re.search(r"time elapsed ([\d.]+)s", log)
    loaded = re.search(r"(\d+) rules successfully loaded, (\d+) rules failed", log)
    if res.returncode != 0 or not elapsed or not loaded or loaded.group(2) != "0":
        raise RuntimeError(f"suricata failed ({res.returncode}): {res.stderr[-1000:]}{log[-2000:]}")
    counters = {}
    for line in (out / "stats.log").read_text().splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[1] == "Total":
            counters[parts[0]] = int(parts[2])   # the last dump (at exit) wins
    return {"packets": counters.get("decoder.pkts", 0), "seconds": float(elapsed.group(1)),
            "wall_s": wall, "rules_loaded": int(loaded.group(1)),
            "dropped": counters.get("ips.blocked", 0), "alerts": counters.get("detect.alert", 0),
            "emergency": counters.get("flow.emerg_mode_entered", 0)}
