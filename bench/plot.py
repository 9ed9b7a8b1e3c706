"""`egressd bench --plot`: throughput by traffic and policy size, baselines beside egressd."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")               # files only, never a window
import matplotlib.pyplot as plt     # noqa: E402  (after the backend is chosen)

STYLE = {"egressd file-to-file": ("C0", "o", "-"), "egressd in-memory": ("C0", "s", "--"),
         "suricata single": ("C3", "^", "-"), "suricata autofp": ("C3", "v", "--"),
         "dpkt pipeline": ("C2", "D", "-"), "scapy pipeline": ("C4", "x", "-"),
         "ndpiReader": ("C1", "P", "-"), "plain copy": ("C7", "*", ":")}
SIZE_ORDER = {"64": 0, "imix": 1, "1500": 2, "jumbo": 3}


def _axis(ax, rows: list[dict], key: str, fixed: dict, title: str, log_x: bool) -> None:
    """packets/s of each contestant along `key`, the other two axes at `fixed`."""
    sel = [r for r in rows if r["packets_per_s"] and all(r[k] == v for k, v in fixed.items())]
    for name in dict.fromkeys(r["contestant"] for r in sel):
        pts = sorted((SIZE_ORDER.get(r[key], 9) if key == "sizes" else r[key], r["packets_per_s"], r[key])
                     for r in sel if r["contestant"] == name)
        color, marker, line = STYLE.get(name, ("k", ".", "-"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker, linestyle=line,
                label=name)
    if key == "sizes":
        present = sorted({r["sizes"] for r in sel}, key=lambda v: SIZE_ORDER.get(v, 9))
        ax.set_xticks([SIZE_ORDER.get(v, 9) for v in present], present)
    if log_x:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("packets/s")
    ax.grid(True, which="both", alpha=0.3)


def plot(doc: dict, path: Path) -> None:
    rows = doc["rows"]
    h = doc["headline"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    _axis(axes[0, 0], rows, "flows", {"sizes": h["sizes"], "domains": h["domains"]},
          f"vs flows ({h['sizes']}, {h['domains']:,} domains)", True)
    axes[0, 0].set_xlabel("flows in the capture")
    _axis(axes[0, 1], rows, "domains", {"sizes": h["sizes"], "flows": h["flows"]},
          f"vs allowlist size ({h['sizes']}, {h['flows']:,} flows)", True)
    axes[0, 1].set_xlabel("domains on the allowlist")
    _axis(axes[0, 2], rows, "sizes", {"flows": h["flows"], "domains": h["domains"]},
          f"vs packet sizes ({h['flows']:,} flows, {h['domains']:,} domains)", False)
    axes[0, 2].set_xlabel("inner packet sizes of bulk data")

    head = [r for r in rows if r.get("headline") and r["packets_per_s"]]
    ax = axes[1, 0]
    ax.barh([r["contestant"] for r in head], [r["packets_per_s"] for r in head],
            color=[STYLE.get(r["contestant"], ("k",))[0] for r in head])
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_title("headline cell, every contestant", fontsize=10)
    ax.set_xlabel("packets/s")

    cell = next(c for c in doc["cells"] if c["headline"])
    stages = cell["egressd"]["stages_ns_per_packet"]["in_memory"]
    ax = axes[1, 1]
    ax.barh(list(stages), list(stages.values()), color="C0")
    ax.invert_yaxis()
    ax.set_title("where egressd's time goes (headline, in memory)", fontsize=10)
    ax.set_xlabel("ns/packet")

    mem = doc["memory"]
    ax = axes[1, 2]
    ax.plot([m["capacity"] for m in mem["by_capacity"]], [m["peak_rss_mb"] for m in mem["by_capacity"]],
            "o-", color="C0", label="vs flow table slots (same capture)")
    ax.set_xscale("log")
    ax.set_xlabel("flow table slots", color="C0")
    ax.set_ylabel("peak RSS, MB")
    top = ax.twiny()
    top.plot([m["packets"] for m in mem["by_length"]], [m["peak_rss_mb"] for m in mem["by_length"]],
             "s--", color="C1", label="vs capture length (1 M slots)")
    top.set_xlabel("packets in the capture", color="C1")
    ax.set_ylim(bottom=0)
    ax.set_title("replay memory", fontsize=10, pad=28)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=8, fontsize=9)
    m = doc["machine"]
    fig.suptitle(f"egressd bench {doc['started']}: {m['cpu']}, {m['cores']} cores, load "
                 f"{m['load_avg_1m']}; Python {m['python']}, numba {m['numba']}, suricata "
                 f"{m['suricata']}, nDPI {m['ndpi']}" + (" (--quick: speeds mean nothing)"
                                                         if doc["quick"] else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
