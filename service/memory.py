"""Process memory: resident size, and giving freed heap back to the system after a request.

A request allocates volume-sized buffers (upload, int16 volume, labels, answer). numpy frees them, but
glibc keeps freed heap arenas mapped, so the resident size stays near the request's peak. ``release``
(run after each ``/segment`` answer is sent) calls glibc's ``malloc_trim(0)``, which returns the free
pages; ONNX Runtime's own arena is shrunk by the model runtime after each request's last batch
(``MSDN_ARENA_SHRINKAGE``). Elsewhere than glibc ``release`` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from typing import Optional

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _libc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def rss_bytes() -> Optional[int]:
    """Resident set size of this process (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim(0)``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
