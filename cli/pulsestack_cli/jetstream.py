"""`pulsestack jetstream streams-healthy|peer-remove`: what the Ansible runbooks ask the NATS cluster.

The playbooks that replace a NATS server (roles/nats_jetstream) run these in a throwaway container of the
processors image on the bus network: every node already has that image, so no third-party tool image is
needed. Each prints the JetStream API's own JSON answers, as the `nats` CLI does with --json. Starting such a
container costs seconds on a busy node, so `streams-healthy` waits inside one container instead of being
polled from outside.
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


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("jetstream", help="cluster health and peer removal, for the runbooks")
    jsub = parser.add_subparsers(dest="action", required=True)
    healthy = jsub.add_parser(
        "streams-healthy", help="wait until streams are fully replicated and current; their infos as a JSON list")
    healthy.add_argument("streams", nargs="+")
    healthy.add_argument("--replicas", type=int, default=3, help="replicas each stream must have (default 3)")
    healthy.add_argument("--within", type=float, default=0.0,
                         help="seconds to wait for it (default 0: answer at once)")
    remove = jsub.add_parser(
        "peer-remove", help="forget a stopped server's JetStream peer (system account user)")
    remove.add_argument("server", help="the server's name (server_name)")


async def _request(nc: NATS, subject: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        reply = await nc.request(subject, json.dumps(payload).encode() if payload else b"", timeout=API_TIMEOUT)
    except (NoRespondersError, TimeoutError):
        # Server-wide requests are only answered for users of the system account.
        return {"error": {"code": 503, "description": f"no answer on {subject}: JetStream clustered, and the "
                                                      "user in the account that may ask?"}}
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


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


async def _streams_healthy(nc: NATS, streams: list[str], replicas: int, within: float) -> int:
    deadline = time.monotonic() + within
    while True:
        infos = [await _request(nc, f"$JS.API.STREAM.INFO.{stream}") for stream in streams]
        reasons = {s: r for s, info in zip(streams, infos, strict=True) if (r := unhealthy(info, replicas))}
        if not reasons or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    print(json.dumps(infos))
    for stream, reason in reasons.items():
        print(f"streams-healthy: {stream}: {reason}", file=sys.stderr)
    return 1 if reasons else 0


async def run(args: argparse.Namespace) -> int:
    nc = await connect()
    try:
        if args.action == "streams-healthy":
            return await _streams_healthy(nc, args.streams, args.replicas, args.within)
        answer = await _request(nc, "$JS.API.SERVER.REMOVE", {"peer": args.server})
    finally:
        await nc.close()
    print(json.dumps(answer))
    if "error" in answer:
        print(f"{args.action}: {answer['error'].get('description', answer['error'])}", file=sys.stderr)
        return 1
    return 0
