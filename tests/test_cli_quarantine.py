"""`pulsestack quarantine list` on a bus of its own: empty, then holding more records than it shows."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import msgspec
import nats

from pulsestack.bus.quarantine import QuarantineRecord
from pulsestack.bus.topology import QUARANTINE, BusLimits, setup
from pulsestack_cli.localstack import NatsServer


async def quarantine_list(url: str, *args: str) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pulsestack_cli", "quarantine", "list", *args, env={**os.environ, "NATS_URL": url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode().splitlines()


async def test_quarantine_list_answers_on_an_empty_stream_and_shows_the_newest(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", sync_always=False)
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await setup(js, BusLimits.from_env())
        code, lines = await quarantine_list(server.url)
        assert (code, lines) == (0, ["0 quarantined record(s)"])
        for n in range(7):
            record = QuarantineRecord(1, "ingest", "malformed", f"record {n}", "192.0.2.1", 1_800_000_000.0 + n)
            await js.publish("quarantine.ingest", msgspec.msgpack.encode(record), stream=QUARANTINE)
        await js.delete_msg(QUARANTINE, 6)  # replayed records leave holes
        await nc.close()
        code, lines = await quarantine_list(server.url, "--limit", "3")
        assert code == 0, lines
        # Sequences 4, 5 and 7 (6 was deleted), oldest first.
        assert [line.rsplit("record ", 1)[1] for line in lines[:-1]] == ["3", "4", "6"], lines
        assert lines[-1] == "6 quarantined record(s); the newest 3 shown (--limit)"
        code, lines = await quarantine_list(server.url)
        assert code == 0 and len(lines) == 7 and lines[-1] == "6 quarantined record(s)", lines
        # --json: one object per record on stdout; the count is a notice on stderr.
        code, lines = await quarantine_list(server.url, "--limit", "2", "--json")
        records = [json.loads(line) for line in lines[:-1]]
        assert code == 0 and [(r["stream_seq"], r["reason"], r["detail"]) for r in records] == [
            (5, "malformed", "record 4"), (7, "malformed", "record 6")], lines
        assert lines[-1] == "6 quarantined record(s); the newest 2 shown (--limit)"
    finally:
        server.stop()
