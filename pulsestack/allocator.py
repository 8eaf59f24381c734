"""The memory allocator every service process runs on: jemalloc, for all of its allocations.

Over the second million readings of tests/test_months_of_operation.py (CI's scale), the raw processor's
resident memory rose 13-20 % on CPython's allocators while its Python objects did not grow (tracemalloc, a gc
census, /proc/PID/smaps): its batches grow when it falls behind, and pymalloc's arenas and glibc's heap keep
the pages a large batch fragmented. On jemalloc (`PYTHONMALLOC=malloc` hands it CPython's small objects too)
the same run ended at 0.97 of its half-way size, and the process gave 10 MB back within a minute of the
traffic ending. docs/durability.md has the runs.

It must be loaded before the interpreter starts (LD_PRELOAD), so it is the starter's business:
deploy/runtime.Dockerfile sets the same two variables in every image, and `ServiceProcess` (the local stack,
`make run`, the tests, the benchmark) adds `environment()` to every service it starts.
"""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY = "libjemalloc.so.2"
# Debian's libjemalloc2 (x86_64, aarch64), then where deploy/runtime.Dockerfile links it.
_PLACES = (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib/aarch64-linux-gnu"), Path("/usr/local/lib"))


def jemalloc() -> Path | None:
    """The installed library, or None (`make tools` installs Debian's libjemalloc2)."""
    return next((place / LIBRARY for place in _PLACES if (place / LIBRARY).exists()), None)


def environment(inherited: dict[str, str] | None = None) -> dict[str, str]:
    """What a service's environment needs to run on jemalloc, keeping a preload the caller already had;
    empty where the library is not installed (the service then runs on CPython's allocators)."""
    library = jemalloc()
    if library is None:
        return {}
    preload = (inherited if inherited is not None else os.environ).get("LD_PRELOAD", "")
    if LIBRARY in preload:
        return {"PYTHONMALLOC": "malloc"}
    return {"LD_PRELOAD": f"{library} {preload}".strip(), "PYTHONMALLOC": "malloc"}


def in_use(pid: int | str = "self") -> bool:
    """Whether a process (this one by default) has jemalloc loaded."""
    try:
        return LIBRARY in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
