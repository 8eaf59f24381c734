"""The Python half of the swarm proof (deploy/swarm-proof.sh runs it with the repository's venv).

    python -m deploy.proof.swarm wait         every runnable service at its desired replicas, healthy
    python -m deploy.proof.swarm delivery     fleet provisioned, driven over UDP and HTTP, exact delivery
    python -m deploy.proof.swarm prometheus   every pulsestack task up == 1, pipeline recording rules with data
    python -m deploy.proof.swarm faults       rolling updates, a NATS server killed, processors scaled 1 -> 3 -> 1,
                                              each under traffic with zero readings lost or duplicated
    python -m deploy.proof.swarm edge         the real Traefik: swarm routes (via socket-proxy), TLS, 401 on admin
                                              routes, HTTP -> HTTPS; socket-proxy refuses writes
    python -m deploy.proof.swarm postgres     PostgreSQL's boundary: every pulsestack session over TLS, no login
                                              without TLS or as the superuser over TCP
    python -m deploy.proof.swarm s3           starts the S3 stand-in the stack archives into, prints URL and endpoint
    python -m deploy.proof.swarm archive      WAL archived into it, encrypted, none failed; a base backup stored
    python -m deploy.proof.swarm summary      the delivery figures of every window

Talks to the stack only as the test override (tests/swarm/stack.override.yml) allows: the host-mode UDP
port, Traefik's 80 and 443, ingest-http's port, the NATS servers' ports and PostgreSQL's relay on this machine,
and `docker` itself (service state, `docker exec` into the Prometheus task for its HTTP API, which is not
published, and into Traefik's to ask the socket proxy on the internal docker-api network).

Environment (set by deploy/swarm-proof.sh): as deploy/proof/harness.py and traffic.py read it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import yaml

from deploy.proof.harness import (
    ARCHIVE_BUCKET,
    ARCHIVE_URL,
    DOMAIN,
    NOT_RUNNABLE,
    PG_PORT,
    PULSESTACK_JOBS,
    SCRAPED_JOBS,
    SECRETS,
    STACK,
    WORK,
    address_of,
    admin_nats,
    docker,
    eventually,
    in_task,
    node_of,
    prometheus_get,
    runnable_services,
    running,
    running_tasks,
    say,
    secret,
    service_log_tail,
    stack_services,
    tls_for,
    wait_converged,
)
from deploy.proof.traffic import (
    DEVICES,
    FIGURES,
    Figures,
    Windows,
    provision_all,
    under_traffic,
    wait_ingesters_know,
)
from pulsestack.bus.topology import RAW, RAW_REPLAY
from pulsestack.store.archive import decrypt_segment, decrypt_stream, parse_key
from pulsestack_cli.localstack import S3StandIn
from simulator.balancer import status_behind_balancer

# The delivery step's window, then one per fault.
WINDOWS = Windows(("steady", "rolling-update", "nats-server-killed", "scale-1-3-1"))


def cmd_wait() -> None:
    names = runnable_services()
    say(f"waiting for {len(names)} services: {', '.join(names)}")
    elapsed = wait_converged(names, float(os.environ.get("PULSESTACK_PROOF_WAIT", "300")), "deploy")
    say(f"every runnable service at its desired replicas and healthy after {elapsed:.0f} s")
    skipped = sorted(NOT_RUNNABLE & set(stack_services()))
    if skipped:
        say(f"not runnable offline (deployed, not waited for): {', '.join(skipped)}")


async def cmd_delivery() -> None:
    await provision_all(WINDOWS)
    say(f"{len(WINDOWS.names)} fleets of {DEVICES} devices registered (registry role, admin NATS user)")
    await wait_ingesters_know(WINDOWS, 60)
    seconds = float(os.environ.get("PULSESTACK_PROOF_SECONDS", "25"))
    await under_traffic(WINDOWS, 0, seconds=seconds, through_traefik=True)


# --------------------------------------------------------------------------------------- Prometheus


def scrape_problems() -> list[str]:
    jobs = "|".join(SCRAPED_JOBS)
    result = prometheus_get("/api/v1/query", query=f'up{{job=~"{jobs}"}}')["result"]
    by_job: dict[str, list[float]] = {}
    for series in result:
        by_job.setdefault(series["metric"]["job"], []).append(float(series["value"][1]))
    problems = []
    for job in SCRAPED_JOBS:
        tasks = running_tasks(job)
        values = by_job.get(job, [])
        if len(values) != tasks or any(v != 1.0 for v in values):
            problems.append(f"{job}: {tasks} running task(s), up = {values}")
    return problems


# Pipeline recording rules that only have data once something of their kind happened.
EVENT_DRIVEN = {
    "stage_reason:pulsestack_quarantined:rate5m": "no reading quarantined",
    # The outcome counter's `redelivered` series appears with the first redelivery (not primed).
    "stage:pulsestack_processor_redelivered:rate10m": "no redelivery yet",
    "stage:pulsestack_processor_redelivered:ratio_rate10m": "no redelivery yet",
    "protocol:pulsestack_ingest_received:rate30m_avg_4w": "needs a week of history",
    "protocol:pulsestack_ingest_received:rate30m_weeks_4w": "needs a week of history",
}


def rule_problems() -> tuple[list[str], list[str], list[str]]:
    groups = prometheus_get("/api/v1/rules", type="record")["groups"]
    ok, skipped, problems = [], [], []
    for group in groups:
        if not group["name"].startswith("pulsestack-"):
            continue
        for rule in group["rules"]:
            name = rule["name"]
            if rule.get("health") != "ok":
                problems.append(f"{name}: health {rule.get('health')} {rule.get('lastError', '')}")
                continue
            data = prometheus_get("/api/v1/query", query=name)["result"]
            if data:
                ok.append(name)
            elif name in EVENT_DRIVEN:
                skipped.append(f"{name} ({EVENT_DRIVEN[name]})")
            else:
                problems.append(f"{name}: no data")
    return ok, skipped, problems


def cmd_prometheus() -> None:
    started = time.monotonic()
    timeout = 150.0
    while True:
        problems = scrape_problems()
        if not problems:
            break
        if time.monotonic() - started > timeout:
            raise SystemExit("Prometheus: targets not all up: " + "; ".join(problems))
        time.sleep(5)
    jobs = {job: running_tasks(job) for job in PULSESTACK_JOBS}
    say(f"Prometheus (swarm service discovery) scrapes every pulsestack task with up == 1: {jobs}; "
        "and prometheus, alertmanager, node-exporter")
    while True:
        ok, skipped, problems = rule_problems()
        if not problems:
            break
        if time.monotonic() - started > timeout + 60:
            raise SystemExit("Prometheus: recording rules without data: " + "; ".join(problems))
        time.sleep(5)
    say(f"{len(ok)} pipeline recording rules return data; without data by design: {', '.join(skipped) or 'none'}")
    swarm = prometheus_get("/api/v1/query", query="pulsestack_swarm_service_running_replicas")["result"]
    pg = prometheus_get("/api/v1/query", query="pulsestack_postgres_up")["result"]
    say(f"swarm exporter: {len(swarm)} services' replicas, pulsestack_postgres_up = "
        f"{[s['value'][1] for s in pg]}")


# ------------------------------------------------------------------------------------------- faults


def update_force(name: str) -> Callable[[], Awaitable[None]]:
    async def fault() -> None:
        started = time.monotonic()
        await asyncio.to_thread(docker, "service", "update", "--force", "--detach", f"{STACK}_{name}")

        def done() -> bool:
            state = str((stack_services()[name].get("UpdateStatus") or {}).get("State", ""))
            if state in ("rollback_started", "rollback_completed", "paused", "rollback_paused"):
                raise SystemExit(f"update of {name} failed: {state}")
            return state == "completed"

        while not await asyncio.to_thread(done):
            if time.monotonic() - started > 180:
                raise SystemExit(f"update of {name} did not complete")
            await asyncio.sleep(1)
        say(f"  rolling update of {name} (start-first) completed in {time.monotonic() - started:.0f} s")

    return fault


async def rolling_updates() -> None:
    await update_force("raw-processor")()


async def kill_nats_server() -> None:
    nc = await admin_nats()
    try:
        info = await nc.jetstream().stream_info(RAW)
        leader = (info.cluster.leader if info.cluster else None) or "nats-3"
    finally:
        await nc.close()
    # A server's name is its service's and its node's ("nats-2-<node id>").
    service = next((f"nats-{n}" for n in (1, 2, 3) if leader.startswith(f"nats-{n}-")), "nats-3")
    task = running(service)[0]
    started = time.monotonic()
    await asyncio.to_thread(docker, "kill", task["Status"]["ContainerStatus"]["ContainerID"], node=node_of(task))
    say(f"  killed {service} (the RAW stream leader) with SIGKILL")
    await asyncio.sleep(3)
    await asyncio.to_thread(wait_converged, [service], 120, f"{service} back")
    nc = await admin_nats()

    async def replicas_current() -> bool:
        js = nc.jetstream()
        for stream in (RAW, RAW_REPLAY):
            cluster = (await js.stream_info(stream)).cluster
            if cluster is None or cluster.leader is None or len(cluster.replicas or []) != 2:
                return False
            if not all(r.current for r in cluster.replicas or []):
                return False
        return True

    try:
        await eventually(replicas_current, 120, "streams fully replicated again")
    finally:
        await nc.close()
    say(f"  {service} replaced by swarm, streams RAW and RAW_REPLAY on 3 current replicas again after "
        f"{time.monotonic() - started:.0f} s")


async def scale(replicas: int) -> None:
    started = time.monotonic()
    await asyncio.to_thread(docker, "service", "scale", "--detach",
                            f"{STACK}_raw-processor={replicas}")
    await asyncio.sleep(2)
    await asyncio.to_thread(wait_converged, ["raw-processor"], 150, f"scale to {replicas}")
    say(f"  processors scaled to {replicas} in {time.monotonic() - started:.0f} s")


async def scale_1_3_1() -> None:
    await scale(3)
    await asyncio.sleep(5)
    await scale(1)


async def cmd_faults() -> None:
    await under_traffic(WINDOWS, 1, rolling_updates)
    await under_traffic(WINDOWS, 2, kill_nats_server)
    await under_traffic(WINDOWS, 3, scale_1_3_1)


# ------------------------------------------------------------------------------------------ the edge


async def edge_request(host: str, path: str, *, auth: tuple[str, str] | None = None,
                       headers: dict[str, str] | None = None, scheme: str = "https") -> tuple[int, dict[str, str]]:
    """One GET to Traefik's host-mode ports as a client of `host` makes it (Host, TLS server name, the stack's
    CA, which signed the proof's certificate): status and headers."""
    tls = ssl.create_default_context(cafile=str(SECRETS / "ca_cert")) if scheme == "https" else False
    headers = {"Host": host, **(headers or {}), **(basic_auth(*auth) if auth else {})}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, http.get(
            f"{scheme}://{address_of('traefik')}{path}", headers=headers, ssl=tls,
            server_hostname=host if tls else None, allow_redirects=False) as response:
        await response.read()
        return response.status, dict(response.headers)


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def traefik_routers(admin: tuple[str, str]) -> dict[str, Any]:
    """The routers Traefik runs, from its API behind the admin chain."""
    tls = ssl.create_default_context(cafile=str(SECRETS / "ca_cert"))
    host = f"traefik.{DOMAIN}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, http.get(
            f"https://{address_of('traefik')}/api/rawdata", headers={"Host": host, **basic_auth(*admin)}, ssl=tls,
            server_hostname=host) as response:
        routers: dict[str, Any] = (await response.json())["routers"] if response.status == 200 else {}
        return routers


def proxy_answer(method: str, path: str) -> int:
    """What the socket proxy answers a request made from inside Traefik's task (on the docker-api network)."""
    task = running("traefik")[0]
    out = in_task(task, "sh", "-c",
                  f"wget -S -q -O /dev/null --method={method} http://socket-proxy:2375{path} 2>&1; true")
    statuses = [int(line.split()[1]) for line in out.splitlines() if line.strip().startswith("HTTP/")]
    if not statuses:
        raise SystemExit(f"socket proxy: no answer to {method} {path}: {out.strip()}")
    return statuses[-1]


async def flood(host: str, path: str, requests: int) -> Counter[int]:
    """The statuses of `requests` GETs sent as fast as 20 kept-alive connections allow (what one client in a
    browser or a password guesser can do, not a load test of docker-proxy's handshakes)."""
    tls = ssl.create_default_context(cafile=str(SECRETS / "ca_cert"))
    url = f"https://{address_of('traefik')}{path}"
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20, ssl=tls),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def one() -> None:
            async with http.get(url, headers={"Host": host}, server_hostname=host) as response:
                await response.read()
                statuses[response.status] += 1

        await asyncio.gather(*(one() for _ in range(requests)))
    return statuses


async def behind_the_balancer() -> None:
    """As Scaleway's load balancer forwards them (a PROXY v2 header naming the client; swarm-proof.sh sets what
    Traefik trusts and allows): the deployed allow-list refuses a client outside it before the login, lets one
    inside reach it, and a flood from inside gets 429."""
    host, ca = f"prometheus.{DOMAIN}", str(SECRETS / "ca_cert")
    for client, expected in (("203.0.113.9", 403), ("198.51.100.7", 401)):
        status = await asyncio.to_thread(status_behind_balancer, address_of("traefik"), 443, host, client, ca)
        if status != expected:
            raise SystemExit(f"through Traefik behind the balancer, client {client}: {status}, expected {expected}")
        say(f"  admin route behind the balancer, client {client}: {status}")
    statuses = await flood(host, "/-/healthy", 300)
    if statuses[429] == 0:
        raise SystemExit(f"through Traefik, a flood of 300 admin requests was never limited: {dict(statuses)}")
    say(f"  admin route, a flood of 300 requests: {dict(sorted(statuses.items()))}")


async def cmd_edge() -> None:
    admin = ("admin", secret("admin_password"))
    # Routes come from the swarm provider, which reads the engine through the socket proxy; it polls every 15 s.
    wanted = {"sigfox@swarm", "api@swarm", "prometheus@swarm", "alertmanager@swarm", "dashboard@swarm"}
    routers: dict[str, Any] = {}

    async def routed() -> bool:
        nonlocal routers
        routers = await traefik_routers(admin)
        return wanted <= set(routers) and all(routers[r].get("status") == "enabled" for r in wanted)

    await eventually(routed, 60, "Traefik routes the stack's services")
    say(f"Traefik (the real v3 binary) runs {len(routers)} routers, those of services from its swarm provider "
        "through socket-proxy")
    token = {"Authorization": f"Bearer {secret('api_tokens').split()[0]}"}
    checks = [
        ("read API, token", edge_request(f"api.{DOMAIN}", "/v1/alerts", headers=token), 200),
        ("read API, no token", edge_request(f"api.{DOMAIN}", "/v1/alerts"), 401),
        ("read API's ops paths are not routed", edge_request(f"api.{DOMAIN}", "/metrics"), 404),
        ("admin route, no credentials", edge_request(f"prometheus.{DOMAIN}", "/-/healthy"), 401),
        ("admin route, wrong password", edge_request(f"prometheus.{DOMAIN}", "/-/healthy",
                                                     auth=("admin", "not the password")), 401),
        ("admin route, credentials", edge_request(f"prometheus.{DOMAIN}", "/-/healthy", auth=admin), 200),
        ("dashboard, no credentials", edge_request(f"traefik.{DOMAIN}", "/api/rawdata"), 401),
        ("plain HTTP", edge_request(DOMAIN, "/v1/sigfox", scheme="http"), 301),  # permanent, to https
    ]
    for what, request, expected in checks:
        status, headers = await request
        if status != expected or (expected == 301 and not headers.get("Location", "").startswith("https://")):
            raise SystemExit(f"through Traefik, {what}: {status} {headers.get('Location', '')}, expected {expected}")
        say(f"  {what}: {status}")
    _, headers = await edge_request(f"api.{DOMAIN}", "/v1/alerts")
    if "max-age=31536000" not in headers.get("Strict-Transport-Security", ""):
        raise SystemExit(f"through Traefik, security headers missing: {headers}")
    await behind_the_balancer()
    for method, path, expected in [
        ("GET", "/v1.41/services", 200), ("GET", "/v1.41/tasks", 200), ("GET", "/v1.41/nodes", 200),
        ("POST", "/v1.41/services/create", 403), ("DELETE", f"/v1.41/services/{STACK}_api", 403),
        ("POST", "/v1.41/containers/create", 403), ("GET", "/v1.41/containers/json", 403),
        ("GET", "/v1.41/secrets", 403), ("POST", "/v1.41/swarm/leave?force=1", 403),
    ]:
        answer = proxy_answer(method, path)
        if answer != expected:
            raise SystemExit(f"socket proxy: {method} {path} answered {answer}, expected {expected}")
    if f"{STACK}_api" not in docker("service", "ls", "--format", "{{.Name}}").split():
        raise SystemExit("the refused DELETE removed the api service")
    say("  socket proxy: GET services, tasks, nodes 200; writes, containers, secrets 403 (the engine untouched)")


async def cmd_postgres() -> None:
    """What pulsestack/store/pg_hba.conf and stack.yml's ssl=on promise, on the running server (Debian's build,
    with OpenSSL): the services' sessions are all encrypted, and the server refuses the logins it must."""
    task = running("postgres")[0]
    sessions = docker("exec", "-u", "postgres", task["Status"]["ContainerStatus"]["ContainerID"], "psql", "-d",
                      "pulsestack", "-AtF", " ", "-c",
                      "SELECT a.usename, s.ssl, coalesce(s.version, '-') FROM pg_stat_activity a JOIN pg_stat_ssl s"
                      " USING (pid) WHERE a.usename LIKE 'pulsestack%' ORDER BY 1", node=node_of(task)).split("\n")
    rows = [line.split() for line in sessions if line.strip()]
    if not rows or any(ssl_on != "t" for _, ssl_on, _ in rows):
        raise SystemExit(f"postgres: a pulsestack session without TLS, or none at all: {rows}")
    say(f"postgres: {len(rows)} sessions of {', '.join(sorted({user for user, _, _ in rows}))}, all over "
        f"{', '.join(sorted({version for _, _, version in rows}))}")
    refused = [
        ("a role without TLS", "pulsestack_reader", "postgres_reader_password", False),
        ("the superuser over TLS", "postgres", "postgres_password", tls_for("postgres")),
    ]
    for what, role, password, tls in refused:
        try:
            conn = await asyncpg.connect(host=address_of("postgres-relay"), port=PG_PORT, user=role,
                                         database="pulsestack", password=secret(password), timeout=10, ssl=tls)
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            say(f"  {what}: refused ({exc})")
        else:
            await conn.close()
            raise SystemExit(f"postgres: {what} logged in over TCP")


# ------------------------------------------------------------------------------------------- archive

S3_PORT = int(os.environ.get("PULSESTACK_PROOF_S3_PORT", "15901"))


def cmd_s3() -> None:
    """Starts the S3 stand-in stack.yml's PostgreSQL archives into (moto) and prints the archive's URL and the
    stand-in's endpoint, the stack's PULSESTACK_ARCHIVE_URL and _ENDPOINT. It listens
    on the engine's gateway bridge, where every container's way out of its overlay networks leads; it outlives
    this command (deploy/swarm-proof.sh stops it by its pid file)."""
    host = docker("network", "inspect", "docker_gwbridge", "-f", "{{(index .IPAM.Config 0).Gateway}}").strip()
    server = S3StandIn(ARCHIVE_BUCKET, WORK / "moto.log", host=host, port=S3_PORT)
    server.start()
    assert server.process is not None
    (WORK / "moto.pid").write_text(f"{server.process.pid}\n")
    print(ARCHIVE_URL, server.endpoint)


def cmd_archive() -> None:
    """stack.yml's WAL archiving, running: the server archives into the S3 stand-in without a failure, every
    object there is encrypted with the archive key under its own name (WAL segments and base backups alike),
    and archive-scheduler has stored a base backup (its metric, which alert BaseBackupOverdue reads)."""
    import boto3  # the dev extra's, as moto

    task = running("postgres")[0]
    started = time.monotonic()
    while True:
        ended = prometheus_get("/api/v1/query", query="pulsestack_postgres_base_backup_last_end_timestamp_seconds")
        if ended["result"] and float(ended["result"][0]["value"][1]) > 0:
            break
        if time.monotonic() - started > 240:
            raise SystemExit("archive: archive-scheduler stored no base backup in 240 s:\n"
                             + service_log_tail("archive-scheduler"))
        time.sleep(5)
    say(f"archive: a base backup stored {time.monotonic() - started:.0f} s into the step, seen by Prometheus")
    archived, failed = docker("exec", "-u", "postgres", task["Status"]["ContainerStatus"]["ContainerID"], "psql",
                              "-XAtF", " ", "-c", "SELECT archived_count, failed_count FROM pg_stat_archiver",
                              node=node_of(task)).split()
    if int(archived) == 0 or int(failed):
        raise SystemExit(f"archive: pg_stat_archiver counts {archived} archived and {failed} failed")
    s3 = boto3.client("s3", endpoint_url=os.environ["PULSESTACK_ARCHIVE_ENDPOINT"], region_name=S3StandIn.REGION,
                      aws_access_key_id=secret("archive_access_key_id"),
                      aws_secret_access_key=secret("archive_secret_access_key"))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=ARCHIVE_BUCKET).get("Contents", [])]
    wal = [k for k in keys if "/wals/" in k]
    key = parse_key(secret("archive_key"))
    for name in wal:
        blob = s3.get_object(Bucket=ARCHIVE_BUCKET, Key=name)["Body"].read()
        decrypt_segment(key, name.rsplit("/", 1)[1], blob)  # raises unless encrypted so, under this name
    backups = sorted(k.split("/base/")[1].split("/")[0] for k in keys if k.endswith("/data") and "/base/" in k)
    sizes = []
    for data in (k for k in keys if k.endswith("/data") and "/base/" in k):
        body = s3.get_object(Bucket=ARCHIVE_BUCKET, Key=data)["Body"]
        # raises unless every frame decrypts with this key under this backup's name, and the last one is there
        sizes.append(sum(len(c) for c in decrypt_stream(key, data.split("/")[-2], body.read)))
    say(f"archive: pg_stat_archiver {archived} archived, 0 failed; in the bucket {len(wal)} WAL files and base "
        f"backup(s) {', '.join(backups)} ({', '.join(f'{n / 2**20:.0f} MiB' for n in sizes)} of tar), each "
        "decrypted with the archive key")


def cmd_summary() -> None:
    if not FIGURES.exists():
        print("no delivery figures")
        return
    for f in json.loads(FIGURES.read_text()):
        print("  " + Figures(**f).line())


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "wait":
        cmd_wait()
    elif command == "delivery":
        asyncio.run(cmd_delivery())
    elif command == "prometheus":
        cmd_prometheus()
    elif command == "faults":
        asyncio.run(cmd_faults())
    elif command == "edge":
        asyncio.run(cmd_edge())
    elif command == "postgres":
        asyncio.run(cmd_postgres())
    elif command == "s3":
        cmd_s3()
    elif command == "archive":
        cmd_archive()
    elif command == "summary":
        cmd_summary()
    elif command == "images":
        # The image of every service of the resolved stack file (stdin: `docker stack config` output).
        for name, service in sorted(yaml.safe_load(sys.stdin)["services"].items()):
            print(name, service["image"])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
