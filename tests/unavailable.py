"""What a test does when a tool, package or privilege it needs is missing."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(message: str) -> NoReturn:
    """Skips the test, or fails it when PULSESTACK_REQUIRE_ALL=1 (CI): a check that did not run must not pass."""
    if os.environ.get("PULSESTACK_REQUIRE_ALL") == "1":
        pytest.fail(f"{message} and PULSESTACK_REQUIRE_ALL=1")
    pytest.skip(message)
