"""`pulsestack jetstream streams-healthy|peer-remove`: what the Ansible runbooks ask NATS.

The playbooks that replace a NATS server (roles/nats_jetstream) run these in a throwaway container of the
processors image on the bus network: every node already has that image, so no third-party tool image is
needed. They print the JetStream API's own JSON answers, as the `nats` CLI does with --json. Starting such a
container costs seconds on a busy node, so one container waits, retries and forgets replaced servers instead
of being polled from outside.

Stream state is read as the account user (PULSESTACK_NATS_USER); peers are removed as a user of the system
account (PULSESTACK_NATS_SYSTEM_USER, PULSESTACK_NATS_SYSTEM_PASSWORD or its _FILE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError

from pulsestack_cli.connections import connect

API_TIMEOUT = 10.0
POLL_SECONDS = 1.0
# A replica answers its leader every second or so. NATS marks a server that shut down offline at once, but
# one that was killed (its VM lost) only after about three minutes; silent for longer than a stopping
# server's lame-duck time (30 s, deploy/nats) it is gone, and its streams should not wait for "offline".
SILENT_SECONDS = 30.0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("jetstream", help="cluster health and peer removal, for the runbooks")
    jsub = parser.add_subparsers(dest="action", required=True)
    healthy = jsub.add_parser(
        "streams-healthy",
        help="wait until streams are fully replicated and current, forgetting replaced servers on the way;"
             " JSON {streams: their infos, forgotten: names}")
    healthy.add_argument("streams", nargs="+", help="stream names, e.g. RAW RAW_REPLAY")
    healthy.add_argument("--replicas", type=int, default=3, help="replicas each stream must have (default 3)")
    healthy.add_argument("--within", type=float, default=0.0,
                         help="seconds to wait for it (default 0: answer at once)")
    healthy.add_argument("--running", action="append", default=[], metavar="NAME",
                         help="name of a server that runs now (<service>-<node ID>), repeated for each: the"
                              " peers of servers replaced by one of them are removed while waiting")
    remove = jsub.add_parser("peer-remove", help="forget a stopped server's JetStream peer")
    remove.add_argument("server", help="the server's name (server_name)")
    remove.add_argument("--within", type=float, default=0.0,
                        help="seconds to retry while the cluster refuses (default 0: ask once)")


async def _request(nc: NATS, subject: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        reply = await nc.request(subject, json.dumps(payload).encode() if payload else b"", timeout=API_TIMEOUT)
    except (NoRespondersError, TimeoutError):
        # Server-wide requests are only answered for users of the system account.
        return {"error": {"code": 503, "description": f"no answer on {subject}: JetStream clustered, and the "
                                                      "user in the account that may ask?"}}
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def _stream_infos(nc: NATS, streams: list[str]) -> list[dict[str, Any]]:
    return [await _request(nc, f"$JS.API.STREAM.INFO.{stream}") for stream in streams]


def unhealthy(info: dict[str, Any], replicas: int) -> str | None:
    """Why a stream is not fully replicated and current, from its info; None when it is."""
    if "error" in info:
        return str(info["error"].get("description", info["error"]))
    if replicas <= 1:
        return None
    cluster = info.get("cluster") or {}
    if not cluster.get("leader"):
        return "no leader"
    peers = cluster.get("replicas") or []
    if len(peers) != replicas - 1:
        return f"{len(peers) + 1} of {replicas} replicas"
    lagging = [p.get("name", "?") for p in peers if not p.get("current") or p.get("offline")]
    if lagging:
        return f"not current: {', '.join(lagging)}"
    return None


def _gone(peer: dict[str, Any]) -> bool:
    """Offline, or silent: `active` (nanoseconds since it last answered the stream's leader) beyond
    SILENT_SECONDS, or never heard by this leader at all (NATS then reports 0 and not current): after
    the killed server led the stream, its successor as leader has never heard from it."""
    active = peer.get("active", 0)
    return bool(peer.get("offline")) or active > SILENT_SECONDS * 1e9 or (active == 0 and not peer.get("current"))


def replaced_peers(infos: list[dict[str, Any]], running: list[str]) -> list[str]:
    """Servers that were replaced: gone replicas (_gone) whose service runs now under another name.

    A server's name is "<service>-<node ID>" (stack.yml); swarm restarting a service on another node gives it
    a new name and an empty store. A server down on its own node keeps its name and its data: not replaced.
    """
    services = {name.rsplit("-", 1)[0] for name in running}
    gone = {peer["name"] for info in infos for peer in (info.get("cluster") or {}).get("replicas") or []
            if _gone(peer)}
    return sorted(name for name in gone - set(running) if name.rsplit("-", 1)[0] in services)


async def _peer_remove(system: NATS, server: str, within: float) -> dict[str, Any]:
    """Removes a server's peer, retried while the cluster refuses: it does while a joining is being agreed on."""
    deadline = time.monotonic() + within
    while True:
        answer = await _request(system, "$JS.API.SERVER.REMOVE", {"peer": server})
        if "error" not in answer or time.monotonic() >= deadline:
            return answer
        await asyncio.sleep(POLL_SECONDS)


def _print_answer(action: str, answer: dict[str, Any]) -> int:
    print(json.dumps(answer))
    if "error" in answer:
        print(f"{action}: {answer['error'].get('description', answer['error'])}", file=sys.stderr)
        return 1
    return 0


class _Forgetter:
    """Removes the peers of replaced servers (replaced_peers) as the system user, each once."""

    def __init__(self, running: list[str]) -> None:
        self._running = running
        self._system: NATS | None = None
        self.forgotten: list[str] = []
        self.refused: dict[str, str] = {}

    async def forget(self, infos: list[dict[str, Any]]) -> None:
        for server in replaced_peers(infos, self._running):
            if server in self.forgotten:
                continue  # removed, not yet gone from every stream's info
            if self._system is None:
                self._system = await connect(system=True)
            answer = await _request(self._system, "$JS.API.SERVER.REMOVE", {"peer": server})
            if "error" in answer:
                # Refused while a new peer's joining is being agreed on: the next poll asks again.
                self.refused[server] = str(answer["error"].get("description", answer["error"]))
            else:
                self.forgotten.append(server)
                self.refused.pop(server, None)

    async def close(self) -> None:
        if self._system is not None:
            await self._system.close()


async def _streams_healthy(nc: NATS, streams: list[str], replicas: int, within: float, running: list[str]) -> int:
    deadline = time.monotonic() + within
    forgetter = _Forgetter(running)
    try:
        while True:
            infos = await _stream_infos(nc, streams)
            await forgetter.forget(infos)
            reasons = {s: r for s, info in zip(streams, infos, strict=True) if (r := unhealthy(info, replicas))}
            if not reasons or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await forgetter.close()
    print(json.dumps({"streams": infos, "forgotten": forgetter.forgotten}))
    for stream, reason in reasons.items():
        print(f"streams-healthy: {stream}: {reason}", file=sys.stderr)
    for server, error in forgetter.refused.items():
        print(f"streams-healthy: the peer of replaced server {server} was not removed: {error}", file=sys.stderr)
    return 1 if reasons else 0


async def run(args: argparse.Namespace) -> int:
    nc = await connect(system=args.action == "peer-remove", patience=args.within)
    try:
        if args.action == "streams-healthy":
            return await _streams_healthy(nc, args.streams, args.replicas, args.within, args.running)
        return _print_answer(args.action, await _peer_remove(nc, args.server, args.within))
    finally:
        await nc.close()
