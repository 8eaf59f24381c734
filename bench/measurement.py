"""Printing and keeping the figures of the small measurements (sweep, alert latency, registry memory,
rollup cost, device import): each writes bench/results/<date>-<host>-<name>.md."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path


def publish(name: str, title: str, lines: list[str], conditions: str) -> Path:
    for line in lines:
        print(line)
    out = Path(__file__).parent / "results" / f"{dt.date.today()}-{platform.node()}-{name}.md"
    out.write_text(f"# {title}\n\n" + "".join(f"- {line}\n" for line in lines) + f"\n{conditions}\n")
    print(f"written {out}")
    return out
