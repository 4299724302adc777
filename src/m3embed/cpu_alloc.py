"""glibc malloc tuning for CPU inference: keep large activation blocks in the heap between batches.

Why this exists: glibc serves every allocation above its mmap threshold with a fresh ``mmap`` and
hands it back with ``munmap`` on free. The dynamic threshold stops at 32 MiB, so each
``[tokens, 3072]`` float32 activation of a 4,096-token batch (48 MiB) is mapped, page-faulted in
4 KiB at a time, and unmapped again, in every layer of every batch. Measured on the 2-core CI
machine (XLM-R-base shape, 300 mixed passages, int8 engine): 3.5 M minor faults and 7 s of kernel
time for 60 s of encoding. Raising the mmap and trim thresholds lets freed blocks be reused
instead. No allocator library does this for us (jemalloc / tcmalloc must be preloaded before the
interpreter starts), so it is one ``mallopt`` call, made once per process.

Process-wide and harmless to numerics. Costs: memory freed at the top of the heap is returned to
the system only above :data:`TRIM_THRESHOLD`. Set ``M3EMBED_MALLOC_TUNING=0`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_malloc"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 1 << 30  # bytes: blocks below this come from the heap and are reused after free
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before glibc returns memory to the system
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3

_state: bool | None = None


def tune_malloc() -> bool:
    """Raise glibc's mmap / trim thresholds once per process; True when they are (now) raised.

    A no-op returning False off glibc, when ``M3EMBED_MALLOC_TUNING=0``, or when this glibc refuses
    the values (older glibc versions cap the mmap threshold at 32 MiB).
    """
    global _state
    if _state is not None:
        return _state
    _state = False
    if os.environ.get("M3EMBED_MALLOC_TUNING", "1").strip() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # trim first: glibc then keeps the heap top that the larger mmap threshold will fill
        ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        ok = ok and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    except (OSError, AttributeError) as e:  # pragma: no cover - glibc without mallopt
        log.debug("mallopt unavailable: %s", e)
        return False
    _state = ok
    if not ok:
        log.debug("glibc refused the malloc thresholds; large activations stay mmapped")
    return ok
