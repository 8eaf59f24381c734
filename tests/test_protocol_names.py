"""Adding a protocol is a codec in the table plus a route (docs/adding-a-protocol.md): no Python module
outside the wire modules and the ingest routes spells a protocol's name; the rest read
pulsestack.wire.codecs. Tests and the benchmark may name them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pulsestack.wire.codecs import CODECS

REPO = Path(__file__).resolve().parents[1]
# Where a protocol's name is its definition (the wire module's PROTOCOL) or part of a route's answer.
ALLOWED = {
    "pulsestack/wire/nbiot.py", "pulsestack/wire/sigfox.py", "pulsestack/wire/lorawan.py",
    "ingest-http/ingest_http/handler.py", "ingest-http/ingest_http/routes.py",
}


def test_no_module_outside_the_wire_and_the_routes_names_a_protocol() -> None:
    names = "|".join(CODECS)
    found = subprocess.run(
        ["git", "grep", "-n", "-E", f"[\"']({names})[\"']", "--", "*.py", ":!tests/", ":!bench/"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert found.returncode in (0, 1), found.stderr  # 1: no line matched
    offending = [line for line in found.stdout.splitlines() if line.split(":", 1)[0] not in ALLOWED]
    assert not offending, "\n".join(offending)
