"""How a run's process asks glibc to keep the memory it frees (Linux with glibc only; elsewhere nothing changes).

By default glibc hands freed memory back to the kernel early: every allocation above a threshold that starts at
128 KiB is its own mmap, released on free, and the top of the heap is trimmed as soon as 128 KiB of it are free.
The next step of a training loop or batch of an extraction then allocates the same sizes again, and the kernel
must find, zero and map every page afresh. On the 2-core virtual machines this project runs on, that first touch
is expensive (~1.8 s per GiB, in system time): measured per training step, one thread, torch 2.14.1 — the
data-scale ResNet took 4,139 page faults and 12 ms of system time (of 126 ms), the linear probe's vit_tiny unit
8.1M faults and 25 s of system time (of 138 s).

`keep_freed_memory()` sets glibc's mmap threshold to its largest value (32 MiB: smaller allocations come from the
heap) and its trim threshold and top pad high (freed heap memory stays in the process for the next allocation).
Measured the same way: 8-16 faults per ResNet step (0.1 ms of system time), the probe unit 1.7M faults and 6.7 s;
the data-scale ResNet and ViT ~10-15% more steps per second. The price is memory: a process keeps its heap's
high-water mark (the largest set of live allocations under 32 MiB) until it exits. Computed values do not change:
this is where memory comes from, not what is computed in it. VITCLIP_KEEP_FREED_MEMORY=0 turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters (glibc's malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # bytes free at the heap's top before glibc gives them back (mallopt takes an int)
TOP_PAD = 64 << 20  # extra bytes asked of the kernel each time the heap grows


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory (see the module docstring); True when the settings were applied."""
    if os.environ.get("VITCLIP_KEEP_FREED_MEMORY", "1") == "0" or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # only glibc has it: musl's and others' malloc take no mallopt
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(libc.mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
