"""Per-flow tables (flow slots, names state, policy state): zeroed arrays in
transparent huge pages.

Flows land on random slots, so a batch touches rows all over tables of 64-138 MB.  In
4 KiB pages every such touch risks a TLB miss (a page walk) and, the first time, a
page fault; Linux's default THP mode ("madvise") gives 2 MiB pages only to memory that
asks for them, which cuts both by 512.  Where huge pages are off or refused, the
mapping simply stays in small pages.
"""
from __future__ import annotations

import mmap

import numpy as np

_HUGE = 2 << 20
_MIN_BYTES = 4 * _HUGE      # below this, plain numpy: too small to matter


def zeros(n: int, dtype: np.dtype | type) -> np.ndarray:
    """np.zeros(n, dtype), in huge pages when it is large enough."""
    dt = np.dtype(dtype)
    nbytes = n * dt.itemsize
    if nbytes < _MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.zeros(n, dt)
    size = -(-nbytes // _HUGE) * _HUGE
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except OSError:   # THP compiled out or disabled: small pages, same zeros
        pass
    # the array keeps the mapping alive (its base); anonymous memory starts zeroed
    return np.frombuffer(m, dt, count=n)
