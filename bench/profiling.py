"""Sampling profiles of the running services with py-spy, summarised as own time per function and module."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _module(path: str) -> str:
    p = path.replace("\\", "/")
    if "site-packages/" in p:
        return p.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for marker in ("/pulsestack/", "/processors/", "/ingest_udp/", "/ingest_http/", "/simulator/"):
        if marker in p:
            rest = p.split(marker, 1)[1]
            return marker.strip("/") + "." + rest.split("/")[0].removesuffix(".py")
    if "/lib/python3" in p:
        return "stdlib." + p.rsplit("/", 1)[-1].removesuffix(".py")
    return p.rsplit("/", 1)[-1]


def summarize(raw: str, rate: int, seconds: float, top: int = 12) -> dict[str, Any]:
    own: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.rsplit(";", 1)[-1]
        m = _FRAME.match(leaf)
        func, file = (m["func"], m["file"]) if m else (leaf, "")
        own[f"{func} ({file.rsplit('/', 1)[-1]})"] += count
        modules[_module(file)] += count
    if not total:
        return {"error": "no samples (idle, or py-spy could not attach)"}
    return {
        "samples": total,
        "busy": total / (rate * seconds),
        "top": [(n / total, name) for name, n in own.most_common(top)],
        "modules": [(m, n / total) for m, n in modules.most_common(8)],
    }


async def profile(pids: dict[str, int], seconds: float, outdir: Path, rate: int = 100) -> dict[str, dict[str, Any]]:
    """Records every pid for `seconds` without stopping it (--nonblocking), returns a summary per name."""
    binary = py_spy()
    if binary is None:
        return {name: {"error": "py-spy not installed (pip install py-spy)"} for name in pids}
    outdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    procs = {}
    for name, pid in pids.items():
        out = outdir / f"{name}.collapsed"
        procs[name] = (out, await asyncio.create_subprocess_exec(
            binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", str(rate),
            "--format", "raw", "--nonblocking", "--output", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        ))
    results: dict[str, dict[str, Any]] = {}
    for name, (out, proc) in procs.items():
        _, err = await proc.communicate()
        if proc.returncode or not out.exists():
            results[name] = {"error": f"py-spy failed: {err.decode(errors='replace').strip()[-200:]}"}
            continue
        results[name] = summarize(out.read_text(), rate, seconds)
    return results
