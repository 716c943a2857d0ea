"""What the process's memory is, as Envoy's admin ``/memory`` and its ``server.memory_*``
gauges report it: bytes the C allocator has handed out and not had back (the core's
configuration objects, buffers, connections), the allocator's heap, and the resident set.

glibc's ``mallinfo2`` gives the first two (ctypes, on the main thread, only when asked);
Python's own small-object arenas are mapped outside malloc and show in the resident set
only. Where mallinfo2 is missing (musl, an old glibc) those two are 0.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo2() -> Optional["ctypes._CFuncPtr"]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


_MALLINFO2 = _mallinfo2()


def resident_bytes() -> int:
    """The process's resident set (VmRSS), in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_stats() -> dict:
    """{allocated, heap_size, pageheap_unmapped, pageheap_free, total_thread_cache,
    total_physical_bytes} in bytes, the fields of Envoy's admin.v3.Memory."""
    allocated = heap = free = 0
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        allocated = info.uordblks + info.hblkhd     # in use: from the heap and mmapped chunks
        heap = info.arena + info.hblkhd
        free = info.fordblks
    return {"allocated": allocated, "heap_size": heap, "pageheap_unmapped": 0, "pageheap_free": free,
            "total_thread_cache": 0, "total_physical_bytes": resident_bytes()}


#: Envoy's server gauges, from memory_stats().
SERVER_GAUGES = {"server.memory_allocated": "allocated", "server.memory_heap_size": "heap_size",
                 "server.memory_physical_size": "total_physical_bytes"}
