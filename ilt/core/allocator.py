"""glibc's allocator settings for training on a CPU (issue 26).

glibc serves an allocation above its mmap threshold (dynamic, at most 32 MiB
on 64-bit) with a fresh ``mmap`` and unmaps it on ``free``; the next step's
allocation of the same size faults every page in again and the kernel zeroes
it. A training step's large temporaries (Whisper's feed-forward activations
at micro-batch 4 of 30 s inputs: 37-48 MiB each) cross that threshold, so the
step spends system time on page faults. Measured on tiny.en, wide LoRA,
micro-batch 4, 2026-12-06 (``bench/profile_step.py --env-compare``): 173k
minor faults and 0.31 s of system time a step by default, 9k and 0.02 s with
the heap kept and reused, the same user time, the same loss, peak RSS 2.94 ->
2.99 GiB; ``MALLOC_MMAP_THRESHOLD_=1048576`` (a low-RSS setting) gave 1.34M
faults and 1.41 s a step at 1.89 GiB.

:func:`reuse_freed_memory` sets, at run time (``mallopt``), what the
environment variables ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``
and ``MALLOC_TOP_PAD_`` would: large blocks come from the heap, freed memory
stays there for the next step. It changes no number a model computes. It
does nothing off glibc, when the user set any ``MALLOC_*`` variable (theirs
wins), or with ``ILT_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("ilt")

#: mallopt parameters (malloc.h) and the values set: 2 GiB - 1 (mallopt takes an int)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 1 << 30), (M_MMAP_THRESHOLD, 2**31 - 1))
_applied: list[bool] = []


def reuse_freed_memory() -> bool:
    """Keep freed memory in the heap for reuse (see the module); ``True`` when set now or before."""
    if _applied:
        return _applied[0]
    ok = False
    if os.environ.get("ILT_MALLOC", "") != "default" and not any(k.startswith("MALLOC_") for k in os.environ):
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            mallopt = getattr(libc, "mallopt", None) if libc is not None and hasattr(libc, "gnu_get_libc_version") \
                else None
        except OSError:
            mallopt = None
        if mallopt is not None:
            ok = all(mallopt(param, ctypes.c_int(value)) == 1 for param, value in SETTINGS)
            log.debug("allocator: glibc keeps freed memory for reuse: %s", ok)
    _applied.append(ok)
    return ok


__all__ = ["reuse_freed_memory"]
