"""nDPI's `ndpiReader` as a baseline, on the decapsulated traffic.

ndpiReader knows no GENEVE, so it reads the inner packets alone: `write_inner` cuts
them out of a GWLB capture (egressd's decap finds them; numpy copies them, batch by
batch) into a raw-IP pcap, untimed.  ndpiReader then classifies every flow of that file
(TLS SNI, HTTP Host, DNS, QUIC...): DPI without a policy or a return path, so less work
than egressd does.  It is rated by its own "Packet Processing Time" (its set-up and
the summary it prints left out, as egressd's start-up is); the process time is kept too.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np

from egressd.engine.pcapio import CaptureReader
from egressd.engine.reasons import N_REASONS, Verdict
from egressd.geneve.decap import decap

NDPI = "ndpiReader"
LINKTYPE_RAW = 101
PCAP_NS_HEADER = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, LINKTYPE_RAW)


def write_inner(capture: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the inner IP packets of the GWLB frames of `capture` to pcap `out` (raw IP,
    nanosecond timestamps); return how many.  Frames decap drops are left out."""
    written = 0
    counts = np.zeros(N_REASONS, np.uint64)
    with CaptureReader(capture) as reader, open(out, "wb") as fo:
        fo.write(PCAP_NS_HEADER)
        for b in reader:
            decap(b, counts)
            keep = np.flatnonzero(b.verdict[:b.n] != Verdict.DROP)
            if not len(keep):
                continue
            src = b.off[keep] + b.inner[keep]
            size = b.inner_len[keep].astype(np.int64)
            rec = np.zeros(len(keep) + 1, np.int64)
            np.cumsum(16 + size, out=rec[1:])
            out_buf = np.empty(int(rec[-1]), np.uint8)
            head = np.empty((len(keep), 4), "<u4")
            ts = b.ts_ns[keep]
            head[:, 0], head[:, 1] = ts // 10**9, ts % 10**9
            head[:, 2] = head[:, 3] = size
            out_buf[(rec[:-1, None] + np.arange(16)).ravel()] = head.view(np.uint8).ravel()
            # byte k of packet j goes from src[j] + k to rec[j] + 16 + k
            before = np.repeat(np.cumsum(size) - size, size)
            step = np.arange(int(size.sum())) - before
            out_buf[np.repeat(rec[:-1] + 16, size) + step] = b.buf[np.repeat(src, size) + step]
            fo.write(out_buf.data)
            written += len(keep)
    return written


def version() -> str | None:
    if not shutil.which(NDPI):
        return None
    res = subprocess.run([NDPI, "-h"], capture_output=True, text=True, timeout=30)
    m = re.search(r"nDPI ([\d.]+)", res.stdout + res.stderr)
    return m.group(1) if m else "unknown"


def run(inner_pcap: Path) -> dict:
    """ndpiReader over `inner_pcap`: packets it counted, process time, and its own
    "Packet Processing Time" (without its set-up and summary)."""
    start = time.perf_counter()
    res = subprocess.run([NDPI, "-i", str(inner_pcap), "-v", "0"], capture_output=True,
                         text=True, timeout=3600)
    wall = time.perf_counter() - start
    text = res.stdout + res.stderr
    packets = re.search(r"of (\d+) packets total", text)
    own = re.search(r"Packet Processing Time:\s+(\d+) msec", text)
    if res.returncode != 0 or not packets or not own:
        raise RuntimeError(f"ndpiReader failed ({res.returncode}): {text[-2000:]}")
    return {"packets": int(packets.group(1)), "wall_s": wall, "seconds": int(own.group(1)) / 1e3}
