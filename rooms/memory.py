"""Give memory freed by unloaded rooms back to the operating system.

A room's doc lives in yrs (Rust, on the C allocator) and in Python objects. When a
room and its connections go, much of what they held is only freed by the cyclic
garbage collector (a closed connection, its server protocol and transport refer to
each other; so do a future and its callbacks), and its full collection runs rarely:
after scenario f of ``bench/compare.py`` (500 docs of 20 KB loaded, then left) a
collection found 12,000 such objects. :class:`Reclaimer` runs one after a wave of
unloads, within a budget (:data:`GC_SHARE` of the loop's time: a full collection
pauses the loop for as long as it takes, about 40 ms there).

Then glibc keeps freed heap pages for reuse, so the process RSS stays at its peak: a
node that served a burst of documents looks as big as at the burst.
``malloc_trim(0)`` returns what glibc can; it runs in a worker thread (trimming a big
heap takes milliseconds). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
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


#: The most of the event loop's time full collections after unloads may take: after
#: one that took ``t`` seconds, the next waits ``t / GC_SHARE``.
GC_SHARE = 0.01


class Reclaimer:
    """Runs a full garbage collection after unloads, at most :data:`GC_SHARE` of the
    time (on the event loop's thread: the finalisers of what it frees may touch loop
    objects)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next = 0.0
        self.collections = 0
        self.collected = 0  # objects found unreachable, over every collection

    def wait_seconds(self) -> float:
        """How long until the budget allows the next collection."""
        return max(0.0, self._next - self._clock())

    def collect(self) -> int:
        """Collect now (whatever the budget); the number of unreachable objects found."""
        started = time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - started
        self._next = self._clock() + took / GC_SHARE
        self.collections += 1
        self.collected += found
        log.debug("collected %d unreachable objects in %.1f ms", found, took * 1000)
        return found
