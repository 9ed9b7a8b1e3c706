"""The terminal report of `egressd bench`: machine, results table, targets, stages."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _num(v: float | int | None, fmt: str = ",") -> str:
    return "-" if v is None else format(v, fmt)


def print_report(doc: dict, console: Console) -> None:
    m = doc["machine"]
    caches = " ".join(f"{k} {v}" for k, v in m["caches"].items())
    console.print(f"machine: {m['cpu']} {m['mhz']} MHz, {m['cores']} cores, {caches}, Linux "
                  f"{m['kernel']}, load {m['load_avg_1m']} -> {m['load_avg_1m_end']}; Python "
                  f"{m['python']}, numpy {m['numpy']}, numba {m['numba']}, dpkt {m['dpkt']}, "
                  f"scapy {m['scapy']}, suricata {m['suricata']}, nDPI {m['ndpi']}", markup=False)
    j = doc["jit"]
    console.print(f"JIT (not in any rate): cached {j['cached_s']:.2f} s, cold "
                  + (f"{j['cold_s']:.1f} s" if j["cold_s"] is not None else "not measured"))
    t = Table(title=f"throughput, best of {doc['settings']['rounds']} after a warm-up "
                    "(ratio: egressd file-to-file packets/s over the row's, same cell)",
              title_justify="left")
    for col in ("contestant", "traffic", "flows", "domains", "packets", "packets/s", "Gbit/s",
                "ns/packet", "peak MB", "ratio"):
        t.add_column(col, justify="left" if col in ("contestant", "traffic") else "right")
    previous = None
    for r in doc["rows"]:
        cell = (r["sizes"], r["flows"], r["domains"])
        if previous is not None and cell != previous:
            t.add_section()
        previous = cell
        name = r["contestant"] + ("" if r["status"] == "ok" else f" ({r['status']}: {r.get('note')})")
        t.add_row(name, r["sizes"], f"{r['flows']:,}", f"{r['domains']:,}", _num(r["packets"]),
                  _num(r["packets_per_s"]), _num(r["gbit_per_s"], ".2f"),
                  _num(r["ns_per_packet"], ",.0f"), _num(r.get("peak_rss_mb"), ",.0f"),
                  "" if r["ratio"] is None else f"{r['ratio']:,.1f}x")
    console.print(t)
    targets = Table(title="targets (headline cell)", title_justify="left")
    for col in ("what", "target", "measured", ""):
        targets.add_column(col, justify="left" if col == "what" else "right")
    for x in doc["targets"]:
        met = {True: "met", False: "MISSED", None: "not measured"}[x["met"]]
        targets.add_row(x["what"], _num(x["target"], ",g"), _num(x["measured"], ",g"), met)
    console.print(targets)
    head = next(c for c in doc["cells"] if c["headline"])
    stages = head["egressd"]["stages_ns_per_packet"]
    st = Table(title="where egressd's time goes, headline cell: ns/packet per stage "
                     "(each stage timed alone, batch by batch)", title_justify="left")
    st.add_column("stage")
    st.add_column("in memory", justify="right")
    st.add_column("file to file", justify="right")
    for name in dict.fromkeys([*stages["file_to_file"], *stages["in_memory"]]):
        st.add_row(name, _num(stages["in_memory"].get(name), ",.1f"),
                   _num(stages["file_to_file"].get(name), ",.1f"))
    st.add_row("sum", f"{sum(stages['in_memory'].values()):,.1f}",
               f"{sum(stages['file_to_file'].values()):,.1f}")
    console.print(st)
    mem = doc["memory"]
    console.print("peak RSS of a replay: by flow table capacity "
                  + ", ".join(f"{x['capacity']:,} slots {x['peak_rss_mb']:,.0f} MB" for x in mem["by_capacity"])
                  + "; by capture length "
                  + ", ".join(f"{x['packets']:,} packets {x['peak_rss_mb']:,.0f} MB" for x in mem["by_length"]))
