"""`pulsestack jetstream stream-info|peer-remove`: what the Ansible runbooks ask the NATS cluster.

The playbooks that replace a NATS server (roles/nats_jetstream) run these in a throwaway container of the
processors image on the bus network: every node already has that image, so no third-party tool image is
needed. Both print the JetStream API's own JSON answer, as the `nats` CLI does with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nats.errors import NoRespondersError, TimeoutError

from pulsestack_cli.connections import connect

API_TIMEOUT = 10.0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("jetstream", help="cluster health and peer removal, for the runbooks")
    jsub = parser.add_subparsers(dest="action", required=True)
    info = jsub.add_parser("stream-info", help="a stream's info, replicas included, as JSON")
    info.add_argument("stream")
    remove = jsub.add_parser(
        "peer-remove", help="forget a stopped server's JetStream peer (system account user)")
    remove.add_argument("server", help="the server's name (server_name)")


async def _api(subject: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    nc = await connect()
    try:
        reply = await nc.request(subject, json.dumps(payload).encode() if payload else b"", timeout=API_TIMEOUT)
    except (NoRespondersError, TimeoutError):
        # Server-wide requests are only answered for users of the system account.
        return {"error": {"code": 503, "description": f"no answer on {subject}: JetStream clustered, and the "
                                                      "user in the account that may ask?"}}
    finally:
        await nc.close()
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def run(args: argparse.Namespace) -> int:
    if args.action == "stream-info":
        answer = await _api(f"$JS.API.STREAM.INFO.{args.stream}")
    else:
        answer = await _api("$JS.API.SERVER.REMOVE", {"peer": args.server})
    print(json.dumps(answer))
    if "error" in answer:
        print(f"{args.action}: {answer['error'].get('description', answer['error'])}", file=sys.stderr)
        return 1
    return 0
