"""The process's resident memory: what a packed model really occupies, and handing freed memory back.

    rss()              resident set size of this process in bytes (Linux: /proc/self/statm; None elsewhere)
    release_memory()   return the C heap's free pages to the operating system (glibc ``malloc_trim``)

Why the second one: NumPy takes large arrays from the C allocator. glibc serves a request above its
*mmap threshold* with its own mapping, which it unmaps on free — but it raises that threshold (up to
32 MB) each time such a block is freed, so later arrays of a model come from the heap, and a freed heap
stays in the process. Loading SmolLM2 in float32 and quantizing it leaves about 650 MB of freed heap:
a packed 4-bit model then shows 1 GB resident although its parameters take 171 MB
(benchmarks/bench_memory.py). ``release_memory()`` after the float model is dropped gives it back;
``minq generate`` calls it. It changes no array and is a no-op where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

__all__ = ["rss", "release_memory"]


def rss() -> int | None:
    """Resident set size of this process in bytes, or None where /proc is not available."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_memory() -> bool:
    """Collect garbage, then ``malloc_trim(0)``: True when glibc returned memory to the system."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    return bool(trim(0)) if trim is not None else False
