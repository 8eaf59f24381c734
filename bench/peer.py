"""The peer: a private rsyslogd (imudp -> ompgsql) writing one row per datagram into the same PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

import asyncpg

TEMPLATE = Path(__file__).parent / "templates" / "rsyslog.conf.tmpl"
OMPGSQL = ("/usr/lib/x86_64-linux-gnu/rsyslog/ompgsql.so", "/usr/lib/aarch64-linux-gnu/rsyslog/ompgsql.so",
           "/usr/lib/rsyslog/ompgsql.so")
TABLE = "peer_syslog"


def available() -> bool:
    return shutil.which("rsyslogd") is not None and any(Path(p).exists() for p in OMPGSQL)


def install() -> str | None:
    """Installs Debian's rsyslog and rsyslog-pgsql if missing (root only); returns why not, or None."""
    if available():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "rsyslog/rsyslog-pgsql missing and not root with apt-get: apt-get install rsyslog rsyslog-pgsql"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "rsyslog", "rsyslog-pgsql"]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode:
            return f"{' '.join(cmd)} failed: {result.stderr.strip()[-300:]}"
    return None if available() else "rsyslog installed but ompgsql.so not found"


def version() -> str:
    try:
        out = subprocess.run(["rsyslogd", "-v"], capture_output=True, text=True).stdout
        first = out.splitlines()[0] if out else "?"
        return " ".join(first.replace("compiled with:", "").split())
    except OSError:
        return "not installed"


@dataclass
class PeerSettings:
    workers: int = 4
    batch: int = 1000
    queue_size: int = 4_000_000
    rcvbuf: str = "8m"
    udp_threads: int = 1


class RsyslogPeer:
    def __init__(self, workdir: Path, database_url: str, port: int, settings: PeerSettings | None = None) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.port = port
        self.settings = settings or PeerSettings()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def config(self) -> str:
        url = urlsplit(self.database_url)
        s = self.settings
        return Template(TEMPLATE.read_text()).substitute(
            workdir=self.workdir / "spool", port=self.port, rcvbuf=s.rcvbuf, udp_threads=s.udp_threads,
            queue_size=s.queue_size, batch=s.batch, workers=s.workers, table=TABLE,
            pg_port=url.port or 5432, pg_user=url.username or "postgres", pg_database=url.path.lstrip("/"),
        )

    async def create_table(self) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, received_at timestamptz NOT NULL,"
                " source text NOT NULL, msg text NOT NULL)"
            )
        finally:
            await conn.close()

    def start(self) -> None:
        (self.workdir / "spool").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "rsyslog.conf"
        conf.write_text(self.config())
        check = subprocess.run(["rsyslogd", "-N1", "-f", str(conf)], capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"rsyslog config rejected: {check.stderr.strip()}")
        log = open(self.workdir / "rsyslogd.log", "ab")
        # -n: stay in the foreground, our child; -i: its own pid file, never the system one.
        self.process = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(conf), "-i", str(self.workdir / "rsyslogd.pid")],
            stdout=log, stderr=log,
        )
        time.sleep(1.0)
        if self.process.poll() is not None:
            raise RuntimeError(f"rsyslogd exited at once: see {self.workdir / 'rsyslogd.log'}")

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute(f"TRUNCATE {TABLE} RESTART IDENTITY")

    @staticmethod
    async def rows_estimate(conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {TABLE}"))

    @staticmethod
    async def rows(conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}"))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
