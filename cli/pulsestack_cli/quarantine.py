"""`pulsestack quarantine list|replay`: inspect rejected input, re-inject it after late provisioning."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from pulsestack.bus.quarantine import QuarantineRecord, records, release
from pulsestack.registry.devices import enabled
from pulsestack_cli.connections import connect, connect_db
from pulsestack_cli.output import add_json_flag, emit, notice


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("quarantine", help="inspect or replay quarantined readings")
    qsub = parser.add_subparsers(dest="action", required=True)
    lst = qsub.add_parser("list", help="the newest quarantined records, oldest of them first")
    lst.add_argument("--limit", type=int, default=50, help="how many of the newest to show (default 50)")
    add_json_flag(lst)
    replay = qsub.add_parser("replay", help="re-inject readings of devices now registered and enabled")
    replay.add_argument("--reason", default="unknown_device",
                        help="replay records quarantined for this reason (default unknown_device)")
    add_json_flag(replay)


async def run(args: argparse.Namespace) -> int:
    nc = await connect()
    js = nc.jetstream()
    try:
        if args.action == "list":
            newest, held = await records(js, max(args.limit, 0))
            for seq, rec in newest:
                at = dt.datetime.fromtimestamp(rec.at, dt.UTC).isoformat(timespec="seconds")
                reading = rec.reading
                who = f"{reading.protocol}:{reading.device} seq {reading.seq}" if reading else "-"
                emit(args, {"stream_seq": seq, "at": at, "stage": rec.stage, "reason": rec.reason,
                            "detail": rec.detail, "protocol": reading.protocol if reading else None,
                            "device_id": reading.device if reading else None,
                            "seq": reading.seq if reading else None},
                     f"{seq:>8} {at} {rec.stage:6} {rec.reason:15} {who:40} {rec.detail}")
            shown = f"; the newest {len(newest)} shown (--limit)" if len(newest) < held else ""
            (notice if args.json else print)(f"{held} quarantined record(s){shown}")
            return 0
        return await _replay(js, (await records(js))[0], args)
    finally:
        await nc.close()


async def _replay(js: Any, records: list[tuple[int, QuarantineRecord]], args: argparse.Namespace) -> int:
    reason = args.reason
    candidates = [(seq, r) for seq, r in records if r.reason == reason and r.reading is not None]
    conn = await connect_db()
    try:
        registered = await enabled(conn, [(r.reading.protocol, r.reading.device) for _, r in candidates if r.reading])
    finally:
        await conn.close()
    replayed = skipped = 0
    for seq, record in candidates:
        reading = record.reading
        assert reading is not None
        if (reading.protocol, reading.device) not in registered:
            skipped += 1
            continue
        await release(js, seq, reading)
        replayed += 1
    emit(args, {"replayed": replayed, "skipped": skipped},
         f"replayed {replayed} reading(s); {skipped} still belong to unregistered or disabled devices")
    return 0
