"""Deterministic fault-injection points that tests arm through the environment.

`PULSESTACK_FAULTS="raw.after_commit=3,udp.after_puback=1"` kills the process
with SIGKILL the 3rd time the raw stage passes `after_commit`, and so on. Unset
(production), `hit` is a dictionary lookup that finds nothing.
`PULSESTACK_FAULT_POISON_TRACE=<trace id>` makes the reading with that trace id
fail its stage on every delivery, as a bug would.
"""

from __future__ import annotations

import os
import signal

_armed: dict[str, int] = {}
# A reading whose trace id equals this fails its stage every time: a deterministic poison message.
_poison = os.environ.get("PULSESTACK_FAULT_POISON_TRACE", "")
for _item in filter(None, os.environ.get("PULSESTACK_FAULTS", "").split(",")):
    _name, _, _count = _item.partition("=")
    _armed[_name.strip()] = int(_count or 1)


def hit(point: str) -> None:
    remaining = _armed.get(point)
    if remaining is None:
        return
    if remaining <= 1:
        os.kill(os.getpid(), signal.SIGKILL)
    _armed[point] = remaining - 1


class InjectedFault(RuntimeError):
    pass


def check_poison(trace_id: str) -> None:
    if _poison and trace_id == _poison:
        raise InjectedFault(f"injected poison (trace {trace_id})")
