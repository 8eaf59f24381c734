"""What the CLI prints: lines for people, or with `--json` one JSON object per line for programs.

A list prints one object per item; a report prints one object. Notices (a list was cut, what to do next)
go to stderr either way, so that stdout under `--json` is only data.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON, one object per line, instead of text")


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """One item or report (a dict or a dataclass): `data` as JSON under `--json`, otherwise `text`."""
    print(orjson.dumps(data, default=str).decode() if getattr(args, "json", False) else text)


def notice(text: str) -> None:
    print(text, file=sys.stderr)
