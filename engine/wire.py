"""Integer reads and checksums for kernels.

Callers check bounds before reading: these helpers do not.  They index with
unsigned integers because numba adds a negative-index wraparound branch to every
signed index; without it, header reads run about three times faster.
"""
import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def u8(buf, p):
    return np.uint32(buf[np.uintp(p)])


@njit(cache=True, nogil=True, inline="always")
def u16(buf, p, big=True):
    if big:
        return (u8(buf, p) << 8) | u8(buf, p + 1)
    return u8(buf, p) | (u8(buf, p + 1) << 8)


@njit(cache=True, nogil=True, inline="always")
def u32(buf, p, big=True):
    if big:
        return (u8(buf, p) << 24) | (u8(buf, p + 1) << 16) | (u8(buf, p + 2) << 8) | u8(buf, p + 3)
    return u8(buf, p) | (u8(buf, p + 1) << 8) | (u8(buf, p + 2) << 16) | (u8(buf, p + 3) << 24)


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
        s += np.uint64(u16(buf, p))
        p += 2
    if p < end:
        s += np.uint64(u8(buf, p) << 8)
    while s >> np.uint64(16):
        s = (s & np.uint64(0xFFFF)) + (s >> np.uint64(16))
    return np.uint32(s)


@njit(cache=True, nogil=True, inline="always")
def put_u32le(buf, p, v):
    q = np.uintp(p)
    v = np.uint32(v & 0xFFFFFFFF)
    buf[q] = v & 0xFF
    buf[q + np.uintp(1)] = (v >> 8) & 0xFF
    buf[q + np.uintp(2)] = (v >> 16) & 0xFF
    buf[q + np.uintp(3)] = v >> 24


@njit(cache=True, nogil=True)
def copy(dst, d, src, s, length):
    """dst[d:d+length] = src[s:s+length]; a plain loop is ~8x faster than a numba
    slice assignment for packet-sized copies."""
    d = np.uintp(d)
    s = np.uintp(s)
    for k in range(np.uintp(length)):
        dst[d + k] = src[s + k]
