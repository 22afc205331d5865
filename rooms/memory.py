"""Give memory freed by unloaded rooms back to the operating system.

A room's doc lives in yrs (Rust, on the C allocator) and in Python objects. When a
room unloads, both are freed, but glibc keeps freed heap pages for reuse, so the
process RSS stays at its peak: a node that served a burst of documents looks as big
as at the burst. ``malloc_trim(0)`` returns what glibc can. It is debounced (rooms
unload in waves) and runs in a worker thread: trimming a big heap takes milliseconds.
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def trim_available() -> bool:
    return _TRIM is not None


def release_freed_memory() -> bool:
    """Return freed heap memory to the OS; ``True`` if some was released."""
    if _TRIM is None:
        return False
    return bool(_TRIM(0))
