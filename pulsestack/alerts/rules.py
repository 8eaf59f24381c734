"""What a device's state implies once a reading is stored: which of its alerts open or resolve.

Pure: the raw stage walks its batch's readings one at a time in arrival order and asks `judge` about each, so
the alerts table tells the same history whatever the batches were; `changes.AlertChanges` takes the result
to the database. Silence and a threshold alert's day end need the clock, not a reading: `sweep`.
"""

from __future__ import annotations

from typing import Protocol

from pulsestack.alerts.changes import AlertChanges
from pulsestack.store.timeconv import ts
from pulsestack.wire.reading import Flags, Reading

LEAK_WINDOW = 86_400  # flow in every bucket for a day: a leak
FINEST_FOR_LEAK = 3600  # a wider bucket cannot show an hour without flow
FLAG_ALERTS = (("tamper", Flags.TAMPER), ("reverse_flow", Flags.REVERSE_FLOW), ("battery_low", Flags.BATTERY_LOW))


class _Ended(Protocol):
    @property
    def period_end(self) -> int: ...


class DeviceState(Protocol):
    """What the rules read of a device's stored history (the raw stage's state after `r` is taken)."""

    open_alerts: frozenset[str]  # written back: the next reading's rules see what this one changed

    @property
    def last(self) -> Reading | None: ...  # the device's latest reading: `r` itself when it came in order

    @property
    def point(self) -> _Ended | None: ...  # where the latest reading ends

    @property
    def finest(self) -> int | None: ...  # the narrowest bucket the device has sent

    @property
    def last_zero_flow(self) -> int | None: ...  # the end of the latest bucket without flow

    @property
    def first_bucket(self) -> int | None: ...  # the start of its earliest bucket


def judge(state: DeviceState, r: Reading, alerts: AlertChanges, replay: bool) -> None:
    """Opens or resolves the alerts a device's state implies once `r` is stored (`state.last` is `r` when it
    came in order). Only changes reach the database, each naming the reading that made it by its identity;
    the state's open alerts follow them, for the next reading. A replay (RAW after a restore) does not break
    a silence: the device spoke then, not now."""
    by = {"seq": r.seq, "device_time": ts(r.device_time).isoformat()}
    is_open = set(state.open_alerts)

    def settle(kind: str, holds: bool, **detail: object) -> None:
        if holds and kind not in is_open:
            alerts.open(r.protocol, r.device, kind, **detail, **by)
            is_open.add(kind)
        elif not holds and kind in is_open:
            alerts.resolve(r.protocol, r.device, kind, resolved_by=by)
            is_open.discard(kind)

    if not replay:
        settle("silent", False)  # it spoke again
    if state.last is r:  # a late reading does not say what the device's flags are now
        for kind, flag in FLAG_ALERTS:
            settle(kind, bool(r.flags & flag))
    if state.point is not None and state.finest is not None and state.finest <= FINEST_FOR_LEAK:
        since = state.last_zero_flow if state.last_zero_flow is not None else state.first_bucket
        if since is not None:
            flowing = state.point.period_end - since
            settle("leak", flowing >= LEAK_WINDOW, flowing_since=ts(since).isoformat(), hours=flowing // 3600)
    state.open_alerts = frozenset(is_open)
