"""`pulsestack replay --since TIME`: after a database restore, store again what RAW_REPLAY holds since then.

RAW_REPLAY keeps a copy of every RAW message for the replay window (docs/durability.md). Its messages from
`--since` on are read in stream order by an ephemeral consumer and stored in batches by the raw stage's own
write (`pulsestack.store.readings`): a reading the restored database holds is found by its unique key and
counts as a duplicate, deriving nothing again; a missing one is stored and derived from as the live stage
would. Running it twice, or beside the live processor, stores nothing twice.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as FetchTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from pulsestack.bus.topology import RAW_REPLAY, RAW_SUBJECTS
from pulsestack.store.readings import Stored, store_readings
from pulsestack.store.writes import write_isolating
from pulsestack.wire.reading import Reading, decode_raw, invariant_problem
from pulsestack_cli.connections import connect, connect_pool
from pulsestack_cli.output import add_json_flag, emit, notice

BATCH = 100  # messages per fetch and transaction, as the raw stage's default (PULSESTACK_BATCH)
FETCH_WAIT = 2.0
PROGRESS_EVERY = 5.0  # seconds between progress lines
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "replay", help="after a database restore: store again what RAW_REPLAY holds since a point in time",
        description="Reads RAW_REPLAY from --since on and stores its readings as the raw stage does; readings "
                    "already stored count as duplicates and derive nothing again, so it is safe to run twice "
                    "and while the processors run. Run it with the raw stage's database role (pulsestack_raw) "
                    "or the owner's. Warns when RAW_REPLAY no longer reaches back to --since.")
    parser.add_argument("--since", required=True,
                        help="where to start: an ISO time (UTC unless it says otherwise), e.g. "
                             "2026-12-05T01:30:00Z, or a duration back from now: 90m, 2h, 1d")
    add_json_flag(parser)


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """The point in time `--since` names; ValueError with a one-line reason otherwise."""
    duration = _DURATION.fullmatch(text.strip())
    if duration:
        since = now - dt.timedelta(seconds=float(duration[1]) * _UNIT[duration[2]])
    else:
        try:
            since = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"--since {text!r} is neither an ISO time (2026-12-05T01:30:00Z) nor a duration "
                             "back from now (90m, 2h, 1d)") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
    if since > now:
        raise ValueError(f"--since {text!r} is {since.isoformat()}, in the future: nothing to replay")
    return since


@dataclass(slots=True)
class Report:
    since: str
    first_message_at: str | None = None
    last_message_at: str | None = None
    messages: int = 0
    readings: int = 0
    stored: int = 0  # new to this database
    duplicates: int = 0  # found stored already
    invalid: int = 0  # readings that break an invariant: quarantined when the raw stage first saw them
    undecodable: int = 0  # messages: quarantined when the raw stage first saw them
    rejected: int = 0  # readings the database refused
    not_covered_from: str | None = None  # what RAW_REPLAY no longer holds, if --since reaches before it
    not_covered_to: str | None = None


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="seconds")


async def _reach(js: JetStreamContext) -> tuple[dt.datetime, int]:
    """How far back RAW_REPLAY holds every message RAW took, and its last stream sequence.

    Since its creation, unless it dropped messages (age, bytes, a purge: its first sequence is past 1); then
    since its oldest message, or now if it holds none.
    """
    try:
        info = await js.stream_info(RAW_REPLAY)
    except NotFoundError:
        raise LookupError(f"stream {RAW_REPLAY} does not exist: `pulsestack setup` creates it") from None
    state = info.state
    if state.first_seq <= 1 and info.created is not None:
        return info.created, state.last_seq
    if not state.messages:
        return dt.datetime.now(dt.UTC), state.last_seq
    oldest = (await js.get_msg(RAW_REPLAY, state.first_seq)).time
    return oldest or dt.datetime.now(dt.UTC), state.last_seq


def _uncovered(report: Report, since: dt.datetime, reach: dt.datetime) -> str | None:
    """The warning for a --since older than what RAW_REPLAY holds: readings of that span cannot come back."""
    if since >= reach:
        return None
    report.not_covered_from, report.not_covered_to = _iso(since), _iso(reach)
    return (f"WARNING: {RAW_REPLAY} does not reach back to {report.not_covered_from}, only to "
            f"{report.not_covered_to} (it keeps PULSESTACK_REPLAY_WINDOW, within its byte limit): readings "
            f"acknowledged from {report.not_covered_from} to {report.not_covered_to} that the restored database "
            "lacks cannot be replayed and are lost")


async def _store(pool: asyncpg.Pool, msgs: list[Msg], report: Report) -> None:
    readings: list[Reading] = []
    for msg in msgs:
        try:
            batch = decode_raw(msg.data).readings
        except (msgspec.DecodeError, msgspec.ValidationError):
            report.undecodable += 1
            continue
        report.readings += len(batch)
        for reading in batch:
            if invariant_problem(reading) is None:
                readings.append(reading)
            else:
                report.invalid += 1
    if not readings:
        return
    written, rejected = await write_isolating(pool, readings, store_readings)
    for _, stored in written:
        _count(stored, report)
    for reading, error in rejected:
        report.rejected += 1
        notice(f"refused by the database: {reading.protocol}:{reading.device} seq {reading.seq}: {error}")


def _count(stored: Stored, report: Report) -> None:
    inserted = sum(stored.inserted)
    report.stored += inserted
    report.duplicates += len(stored.inserted) - inserted


async def replay(js: JetStreamContext, pool: asyncpg.Pool, since: dt.datetime) -> Report:
    """Stores every reading of RAW_REPLAY from `since` up to its last message when the replay began."""
    report = Report(_iso(since))
    reach, last_seq = await _reach(js)
    if warning := _uncovered(report, since, reach):
        notice(warning)
    if not last_seq:
        return report
    # Ephemeral: the server forgets it a minute after this command stops asking, whatever ended it.
    sub = await js.pull_subscribe(
        RAW_SUBJECTS, stream=RAW_REPLAY, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since, ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0, max_waiting=1))
    consumer = (await sub.consumer_info()).name
    next_progress = time.monotonic() + PROGRESS_EVERY
    try:
        while True:
            try:
                msgs = await sub.fetch(BATCH, timeout=FETCH_WAIT)
            except FetchTimeout:
                if (await sub.consumer_info()).num_pending == 0:
                    break  # nothing left from `since` on (the window may hold nothing that recent)
                continue
            report.messages += len(msgs)
            first, last = msgs[0].metadata, msgs[-1].metadata
            report.first_message_at = report.first_message_at or _iso(first.timestamp)
            report.last_message_at = _iso(last.timestamp)
            await _store(pool, msgs, report)
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + PROGRESS_EVERY
                notice(f"replay: {report.messages} message(s) read, up to {report.last_message_at} (stream "
                       f"sequence {last.sequence.stream} of {last_seq}); {report.stored} newly stored, "
                       f"{report.duplicates} already stored")
            # What came after the start is the live processor's; replaying it too would be harmless.
            if last.sequence.stream >= last_seq:
                break
    finally:
        await sub.unsubscribe()
        try:
            await js.delete_consumer(RAW_REPLAY, consumer)
        except NotFoundError:
            pass
    return report


def summary(report: Report) -> str:
    covered = (f"from {report.first_message_at} to {report.last_message_at}" if report.first_message_at
               else f"(no message since {report.since})")
    lines = [
        f"replayed {RAW_REPLAY} {covered}: {report.messages} message(s), {report.readings} reading(s); "
        f"{report.stored} newly stored, {report.duplicates} already stored; skipped: {report.invalid} invalid "
        f"reading(s) and {report.undecodable} undecodable message(s) (quarantined when first processed), "
        f"{report.rejected} refused by the database"
    ]
    if report.not_covered_from:
        lines.append(f"NOT COVERED: {report.not_covered_from} to {report.not_covered_to} ({RAW_REPLAY} no longer "
                     "holds it; what the restored database lacks from then is lost)")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    since = parse_since(args.since, dt.datetime.now(dt.UTC))
    nc = await connect()
    try:
        pool = await connect_pool()
        try:
            report = await replay(nc.jetstream(), pool, since)
        finally:
            await pool.close()
    finally:
        await nc.close()
    emit(args, asdict(report), summary(report))
    return 0
