"""ilt.core.allocator: glibc keeps freed memory for the next training step
(no page faults of large temporaries), unless the user chose otherwise."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = ("import ctypes, resource\n"
        "from ilt.core.allocator import reuse_freed_memory\n"
        "ok = reuse_freed_memory()\n"
        "buf = None\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    buf = ctypes.create_string_buffer(64 << 20)\n"  # 64 MiB, above glibc's dynamic mmap threshold
        "    del buf\n"
        "print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")


def _run(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ILT_MALLOC"}
    out = subprocess.run([sys.executable, "-c", CODE], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    on, faults_on = _run()
    off, faults_off = _run(ILT_MALLOC="default")
    theirs, _ = _run(MALLOC_ARENA_MAX="2")
    assert on and not off and not theirs  # the opt-out, and the user's own MALLOC_* settings win
    # 20 x 64 MiB = 327,680 pages of 4 KiB: faulted in each time by default, once when reused
    assert faults_off > 200_000 and faults_on < faults_off / 10
