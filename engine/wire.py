"""Integer reads and checksums for kernels.

Callers check bounds before reading: these helpers do not.
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def u16(buf, p, big=True):
    if big:
        return (np.uint32(buf[p]) << 8) | np.uint32(buf[p + 1])
    return np.uint32(buf[p]) | (np.uint32(buf[p + 1]) << 8)


@njit(cache=True, nogil=True, inline="always")
def u32(buf, p, big=True):
    if big:
        return ((np.uint32(buf[p]) << 24) | (np.uint32(buf[p + 1]) << 16)
                | (np.uint32(buf[p + 2]) << 8) | np.uint32(buf[p + 3]))
    return (np.uint32(buf[p]) | (np.uint32(buf[p + 1]) << 8)
            | (np.uint32(buf[p + 2]) << 16) | (np.uint32(buf[p + 3]) << 24))


@njit(cache=True, nogil=True, inline="always")
def u64(buf, p):
    return (np.uint64(u32(buf, p)) << np.uint64(32)) | np.uint64(u32(buf, p + 4))


@njit(cache=True, nogil=True)
def ones_sum(buf, start, length):
    """RFC 1071 one's-complement sum of buf[start:start+length], folded to 16 bits."""
    s = np.uint64(0)
    end = start + length
    p = start
    while p + 1 < end:
        s += (np.uint64(buf[p]) << np.uint64(8)) | np.uint64(buf[p + 1])
        p += 2
    if p < end:
        s += np.uint64(buf[p]) << np.uint64(8)
    while s >> np.uint64(16):
        s = (s & np.uint64(0xFFFF)) + (s >> np.uint64(16))
    return np.uint32(s)
