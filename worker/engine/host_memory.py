"""Host memory that a CPU training step can reuse instead of faulting in anew.

Every backward pass of a text model allocates the dense gradient of its word embeddings
(vocab x hidden: 47 MB for MiniLM, 94 MB for BERT-base), and the optimizer step frees it
again (zero_grad(set_to_none=True)). glibc serves blocks over 32 MB with a fresh mmap and
unmaps them on free, so each step the kernel faults in and zeroes ~11,000 new pages: for
MiniLM 40 ms of a 400 ms single-thread step, found by profiling (aten::fill_ on [30522, 384]).

`reuse_freed_memory()` tells glibc to serve every block from its heap and keep what is freed
(mallopt M_MMAP_MAX=0 and a 1 GiB trim threshold) while a job trains on the CPU, so the
next step's gradient lands in pages that are already mapped; it puts the defaults back
afterwards, so a process that goes on to do other things (tests, `ftctl run`, the bench's
Trainer runs) is not left changed. GPU runs keep gradients in the device's caching allocator
and do not need it. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults
_KEEP_FREED = 1 << 30


def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return None


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[None]:
    """While inside, large freed blocks stay mapped for the next allocation (see above)."""
    mallopt = _mallopt() if enabled else None
    if mallopt is None or not mallopt(_M_MMAP_MAX, 0):
        yield
        return
    mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED)
    try:
        yield
    finally:
        mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
