"""Process memory: resident size, and giving freed heap back to the system after a request.

A request allocates volume-sized buffers (upload, int16 volume, labels, answer). numpy frees them, but
glibc keeps freed heap arenas mapped, so the resident size stays near the request's peak. ``release``
(run after each ``/segment`` answer is sent) calls glibc's ``malloc_trim(0)``, which returns the free
pages; ONNX Runtime's own arena is shrunk by the model runtime after each request's last batch
(``MSDN_ARENA_SHRINKAGE``). Elsewhere than glibc ``release`` does nothing.

During a request, freed buffers are not given back either: glibc raises its mmap threshold to the
size of each large mapped block freed (up to 32 MiB), so after the first request the upload parts,
decoded slices and batch buffers of later ones come from the heap, whose freed pages stay resident
until ``malloc_trim``. ``fix_mmap_threshold`` (``MSDN_MALLOC_MMAP_THRESHOLD``, at start-up) fixes the
threshold, so blocks at least that large are mapped on their own and unmapped as soon as they are
freed: the upload's parts leave the resident size as their slices are decoded, and a request's peak
is not the sum of everything it ever held. Off by default: every request then maps and faults its
buffers afresh, which made box-mode requests ~0.15 s slower (docs/performance.md, session 4).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from typing import Optional

logger = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameter ``M_MMAP_THRESHOLD``
M_MMAP_THRESHOLD = -3
#: the largest value glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``)
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
#: the threshold this process fixed (``fix_mmap_threshold``), None while glibc's dynamic one applies
fixed_mmap_threshold: Optional[int] = None


@functools.lru_cache(maxsize=1)
def _libc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
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


def fix_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold at ``nbytes`` (module docstring); 0 leaves glibc's dynamic one.

    Returns:
        whether the threshold was set (False for 0, or without glibc).

    Raises:
        ValueError: ``nbytes`` below 0 or over :data:`MAX_MMAP_THRESHOLD`.
    """
    global fixed_mmap_threshold
    if not 0 <= nbytes <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"nbytes must be within 0..{MAX_MMAP_THRESHOLD} (0: glibc's own), got {nbytes!r}")
    libc = _libc()
    if not nbytes or libc is None:
        return False
    if libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)) != 1:
        logger.warning("glibc refused an mmap threshold of %d bytes", nbytes)
        return False
    fixed_mmap_threshold = int(nbytes)
    logger.debug("glibc mmap threshold fixed at %d bytes", nbytes)
    return True
