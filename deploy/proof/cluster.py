"""The Python half of the cluster proof (deploy/cluster-proof.sh runs it with the repository's venv).

    python -m deploy.proof.cluster inventory GEN [RETIRING]  Terraform's inventory for generation GEN (and the
                                                             retiring one during a migration)
    python -m deploy.proof.cluster boot             start every inventory node that does not run, wait for SSH
    python -m deploy.proof.cluster vars             group_vars for the proof and a vault with generated secrets
    python -m deploy.proof.cluster site             ansible-playbook site.yml, then every runnable service healthy
    python -m deploy.proof.cluster delivery         simulated fleet over UDP and HTTP, exact delivery
    python -m deploy.proof.cluster kill-manager     a manager's VM killed under traffic, then started again
    python -m deploy.proof.cluster remove-add-node  remove-node.yml then add-node.yml on a worker, under traffic
    python -m deploy.proof.cluster scale            scale.yml: processors 1 -> 3 -> 1, under traffic
    python -m deploy.proof.cluster s3               the S3 stand-in (moto) on this machine's address on the network
    python -m deploy.proof.cluster backup-restore   backup.yml, a row deleted, restore-dump.yml brings it back
    python -m deploy.proof.cluster migrate          migrate-node-type.yml to a second generation, under traffic
    python -m deploy.proof.cluster again            site.yml again: no task reports a change
    python -m deploy.proof.cluster lose-database    the database node deleted under traffic, restore.yml onto
                                                    another from the WAL archive, replay from RAW_REPLAY

The simulated VMs are containers on this machine (deploy/cluster-node) named by their host name, on a bridge
network that plays the private network. The proof reaches the swarm as an operator would: SSH for Ansible;
and, for its own checks, the engines of the nodes through `docker exec` and the test ports that
tests/swarm/stack.override.yml publishes on the nodes. Traffic and checks are those the swarm proof runs
(deploy/proof/traffic.py and harness.py), pointed at the nodes.

Environment (set by deploy/cluster-proof.sh): PULSESTACK_CLUSTER_WORK (keys, inventory, vault, logs),
PULSESTACK_CLUSTER_CIDR, _GATEWAY, _NETWORK, _NODE_IMAGE, _NODE_LABEL, and the swarm proof's PULSESTACK_PROOF_*.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from deploy.proof import harness, terraform_offline, traffic
from pulsestack.wire import lorawan, sigfox
from pulsestack_cli.localstack import S3StandIn
from simulator.run import Simulation

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("PULSESTACK_CLUSTER_WORK", "/tmp/pulsestack-cluster"))
INVENTORY = WORK / "inventory" / "hosts.yml"
GROUP_VARS = WORK / "inventory" / "group_vars" / "all"
VAULT_FILE = GROUP_VARS / "vault.yml"
# Where the swarm role writes the unlock key docker generated, until the vault holds it (swarm_unlock_key_file).
UNLOCK_KEY_FILE = INVENTORY.parent / "swarm-unlock-key"
VAULT_PASSWORD = WORK / "vault-password"
CIDR = os.environ.get("PULSESTACK_CLUSTER_CIDR", "10.213.0.0/22")
GATEWAY = os.environ.get("PULSESTACK_CLUSTER_GATEWAY", "10.213.0.1")
NETWORK = os.environ.get("PULSESTACK_CLUSTER_NETWORK", "pulsestack-cluster")
NODE_IMAGE = os.environ.get("PULSESTACK_CLUSTER_NODE_IMAGE", "pulsestack-proof/cluster-node:bookworm")
NODE_LABEL = os.environ.get("PULSESTACK_CLUSTER_NODE_LABEL", "org.pulsestack.cluster-proof")
S3_PORT = int(os.environ.get("PULSESTACK_CLUSTER_S3_PORT", "15900"))
SSH_USER = "admin"
# The third-party services with no offline stand-in image (deploy/swarm-proof.sh step 3), which this
# override places nowhere.
OFFLINE_OVERRIDE = "tests/swarm/offline.override.yml"
NOT_RUNNABLE = sorted(yaml.safe_load((REPO / OFFLINE_OVERRIDE).read_text())["services"])
# Generation 1 is the cluster site.yml builds; generation 2 the "larger" VMs that replace it.
MEMORY = {1: "2g", 2: "3g"}
INSTANCE_TYPES = {1: ("PLAY2-SMALL", "PLAY2-SMALL"), 2: ("PRO2-S", "PRO2-M")}

WINDOWS = traffic.Windows(("cluster-steady", "manager-killed", "worker-removed-and-added", "scaled-1-3-1",
                         "migration", "database-node-lost"))

say = harness.say


# ---------------------------------------------------------------------------------------- inventory


def inventory() -> dict[str, Any]:
    hosts: dict[str, Any] = yaml.safe_load(INVENTORY.read_text())
    return hosts


def hosts(group: str) -> dict[str, dict[str, Any]]:
    """Host name -> host vars of an inventory group (swarm: managers and workers)."""
    children = inventory()["all"]["children"]
    if group == "swarm":
        return {**hosts("managers"), **hosts("workers")}
    if group in ("managers", "workers"):
        return dict(children["swarm"]["children"][group].get("hosts") or {})
    return {name: hosts("swarm")[name] for name in (children[group].get("hosts") or {})}


def cmd_inventory(generation: int, retiring: int | None) -> None:
    variables = {
        "private_network_cidr": CIDR,
        "ssh_user": SSH_USER,
        "domain": harness.DOMAIN,
        "admin_cidrs": json.dumps([f"{GATEWAY}/32"]),
        "ssh_public_keys": json.dumps([(WORK / "id_ed25519.pub").read_text().strip()]),
        "generation": str(generation),
        "manager_instance_type": INSTANCE_TYPES[generation][0],
        "worker_instance_type": INSTANCE_TYPES[generation][1],
    }
    if retiring is not None:
        manager_type, worker_type = INSTANCE_TYPES[retiring]
        variables["retiring_generation"] = (
            f'{{ generation = {retiring}, manager_count = 3, worker_count = 3, '
            f'manager_instance_type = "{manager_type}", worker_instance_type = "{worker_type}" }}'
        )
    INVENTORY.parent.mkdir(parents=True, exist_ok=True)
    rendered = terraform_offline.render_inventory(
        Path(subprocess.check_output(["mktemp", "-d"], text=True).strip()), variables,
        terraform_offline.PRIVATE_AS_PUBLIC_IP,
    )
    # Replaced whole: the proof's traffic reads it meanwhile (follow_ingest), and must never see it half written.
    written = INVENTORY.with_suffix(".tmp")
    written.write_text(rendered)
    written.replace(INVENTORY)
    names = ", ".join(f"{n} {v['ansible_host']}" for n, v in hosts("swarm").items())
    say(f"inventory from Terraform's layout and template: {names}")


# -------------------------------------------------------------------------------------------- nodes


def host_docker(*args: str, check: bool = True) -> str:
    """This machine's engine, where the simulated VMs run."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def vm_state(name: str) -> str:
    return host_docker("inspect", "--format", "{{.State.Status}}", name, check=False).strip() or "absent"


def start_vm(name: str, host_vars: dict[str, Any]) -> None:
    state = vm_state(name)
    if state == "running":
        return
    if state != "absent":
        host_docker("start", name)
        return
    host_docker(
        "run", "-d", "--name", name, "--hostname", name, "--label", f"{NODE_LABEL}=1",
        "--network", NETWORK, "--ip", host_vars["ansible_host"],
        "--memory", MEMORY[int(host_vars["node_generation"])],
        "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
        "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
        "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
        "--cgroupns", "private", "--tmpfs", "/run", "--tmpfs", "/run/lock", "-e", "container=docker",
        "--mount", f"type=volume,source={name}-docker,target=/var/lib/docker,volume-label={NODE_LABEL}=1",
        "-v", f"{WORK / 'node-key'}:/etc/node-key:ro",
        NODE_IMAGE,
    )


def ssh_answers(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1) as conn:
            return conn.recv(4).startswith(b"SSH")
    except OSError:
        return False


def wait_for_ssh(names: list[str], timeout: float = 120) -> None:
    started = time.monotonic()
    swarm = hosts("swarm")
    waiting = set(names)
    while waiting:
        waiting = {n for n in waiting if not ssh_answers(swarm[n]["ansible_host"])}
        if time.monotonic() - started > timeout:
            raise SystemExit(f"no SSH after {timeout:.0f} s: {sorted(waiting)}")
        time.sleep(0.5)


def cmd_boot() -> None:
    started = time.monotonic()
    swarm = hosts("swarm")
    for name, host_vars in swarm.items():
        start_vm(name, host_vars)
    wait_for_ssh(list(swarm))
    say(f"{len(swarm)} VMs up with sshd after {time.monotonic() - started:.0f} s: {', '.join(swarm)}")


# ------------------------------------------------------------------------------------------ ansible


def secret_values() -> dict[str, str]:
    names = subprocess.check_output([str(REPO / "deploy" / "secrets.sh"), "--list"], text=True).split()
    folder = Path(os.environ["PULSESTACK_PROOF_SECRETS"])
    # The archive bucket's credentials are the operator's to give (secrets.sh leaves them blank).
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "archive_access_key_id").write_text(S3StandIn.ACCESS[0] + "\n")
    (folder / "archive_secret_access_key").write_text(S3StandIn.ACCESS[1] + "\n")
    subprocess.run([str(REPO / "deploy" / "secrets.sh"), "--files", str(folder)], check=True,
                   stdout=subprocess.DEVNULL)
    return {name: (folder / name).read_text() for name in names}


def cmd_vars() -> None:
    """The cluster's own settings and its vault: what an operator writes next to Terraform's inventory."""
    GROUP_VARS.mkdir(parents=True, exist_ok=True)
    stack_environment = {
        "PULSESTACK_VERSION": os.environ["PULSESTACK_VERSION"],
        "PULSESTACK_REGISTRY": "",
        "PULSESTACK_DOMAIN": harness.DOMAIN,
        "PULSESTACK_INGEST_HTTP_REPLICAS": "1",  # its test port is published in host mode: one per node
        # The scale step takes both to 3 and back to 1: the second site.yml must find them as deployed.
        "PULSESTACK_RAW_PROCESSOR_REPLICAS": "1",
        "PULSESTACK_API_REPLICAS": "1",
        # WAL archiving into the S3 stand-in (cmd_s3), which lose-database restores from.
        "PULSESTACK_ARCHIVE_URL": harness.ARCHIVE_URL,
        "PULSESTACK_ARCHIVE_ENDPOINT": S3_ENDPOINT,
        "PULSESTACK_ARCHIVE_REGION": S3StandIn.REGION,
    }
    settings = {
        "ansible_ssh_private_key_file": str(WORK / "id_ed25519"),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={WORK / 'known_hosts'}",
        # The VMs share this machine's kernel and clock: host-wide settings are the host's.
        "common_time_sync_enabled": False,
        "common_sysctl_enabled": False,
        "common_kernel_modules_enabled": False,
        # This machine is the admin network and the fleet: it reaches the test ports of the override.
        "common_firewall_extra_rules": [f"ip saddr {GATEWAY} accept"],
        # Docker's repository is out of reach: Debian's engine, and a newer CLI the node image brings.
        "docker_package_source": "debian",
        "docker_registry_mirrors": [f"http://{GATEWAY}:5000"],
        "docker_insecure_registries": [f"{GATEWAY}:5000"],
        "stack_override_files": ["tests/swarm/stack.override.yml", OFFLINE_OVERRIDE],
        "stack_resolve_image": "never",  # no registry to ask for digests
        "stack_environment": stack_environment,
        "stack_secrets": "{{ vault_stack_secrets }}",
        "stack_wait_ignore_services": NOT_RUNNABLE,
        "postgres_backup_s3_endpoint_url": S3_ENDPOINT,
        "postgres_backup_s3_region": "fr-par",
        "postgres_backup_s3_bucket": BACKUP_BUCKET,
        "postgres_backup_s3_access_key": "{{ vault_backup_s3_access_key }}",
        "postgres_backup_s3_secret_key": "{{ vault_backup_s3_secret_key }}",
        "postgres_backup_s3_validate_certs": False,
        "postgres_backup_controller_dir": str(WORK / "backups"),
        "nats_jetstream_user": "{{ vault_nats_admin_user }}",
        "nats_jetstream_password": "{{ vault_nats_admin_password }}",
        "nats_jetstream_system_user": "{{ vault_nats_system_user }}",
        "nats_jetstream_system_password": "{{ vault_nats_system_password }}",
        "nats_jetstream_ca_cert": "{{ vault_stack_secrets.ca_cert }}",
        # Docker generates it when site.yml turns autolock on; cmd_site moves it into the vault.
        "swarm_unlock_key": "{{ vault_swarm_unlock_key | default('') }}",
    }
    (GROUP_VARS / "main.yml").write_text("---\n" + yaml.safe_dump(settings, sort_keys=False))
    values = secret_values()
    vault = {
        "vault_stack_secrets": values,
        "vault_backup_s3_access_key": "proof" + secrets.token_hex(6),
        "vault_backup_s3_secret_key": secrets.token_hex(20),
        "vault_nats_admin_user": "admin",
        "vault_nats_admin_password": values["nats_admin_password"].strip(),
        "vault_nats_system_user": "system",
        "vault_nats_system_password": (Path(os.environ["PULSESTACK_PROOF_SECRETS"]) / "nats_system_password")
        .read_text().strip(),
    }
    if not VAULT_PASSWORD.exists():
        VAULT_PASSWORD.write_text(secrets.token_urlsafe(32))
        VAULT_PASSWORD.chmod(0o600)
    write_vault(vault)
    say(f"group_vars written; {len(values)} stack secrets and the S3 and NATS credentials in a vault "
        "encrypted with a password generated for this run")


def read_vault() -> dict[str, Any]:
    vault: dict[str, Any] = yaml.safe_load(subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible-vault"), "view", "--vault-password-file", str(VAULT_PASSWORD),
         str(VAULT_FILE)], check=True, capture_output=True, text=True).stdout)
    return vault


def write_vault(vault: dict[str, Any]) -> None:
    """Encrypts from stdin: the values never touch the disk in clear."""
    subprocess.run([str(REPO / ".venv" / "bin" / "ansible-vault"), "encrypt", "--vault-password-file",
                    str(VAULT_PASSWORD), "--output", str(VAULT_FILE), "-"],
                   input="---\n" + yaml.safe_dump(vault, sort_keys=False), text=True, check=True,
                   capture_output=True)


def playbook(name: str, *extra: str) -> str:
    """Runs a playbook from ansible/ as an operator would; returns its log. Fails with the log's tail."""
    started = time.monotonic()
    log = WORK / f"ansible-{name.removesuffix('.yml')}-{time.strftime('%H%M%S')}.log"
    args = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(INVENTORY),
            "--vault-password-file", str(VAULT_PASSWORD), f"playbooks/{name}", *extra]
    # Each task's time in the log: where a slow runbook spends it.
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks"}
    say(f"  ansible-playbook {name} {' '.join(extra)}")
    with log.open("w") as out:
        done = subprocess.run(args, cwd=REPO / "ansible", stdout=out, stderr=subprocess.STDOUT, env=env)
    text = log.read_text()
    if done.returncode != 0:
        print(text[-6000:], file=sys.stderr)
        raise SystemExit(f"{name} failed (exit {done.returncode}, log {log})")
    recap = text[text.rfind("PLAY RECAP"):].strip()
    say(f"  {name} done in {time.monotonic() - started:.0f} s\n" + recap)
    return text


def recap_changes(log: str) -> dict[str, int]:
    recap = log[log.rfind("PLAY RECAP"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", recap, re.M)}


# ---------------------------------------------------------------------------------- the swarm's view


def use_manager(exclude: set[str] = frozenset(), within: float = 90) -> str:  # type: ignore[assignment]
    """Points the proof's checks at a running manager's engine (waiting out a leader election)."""
    deadline = time.monotonic() + within
    while True:
        for name in hosts("managers"):
            if name not in exclude and vm_state(name) == "running":
                probe = subprocess.run(["docker", "exec", name, "docker", "node", "ls", "-q"], capture_output=True)
                if probe.returncode == 0:
                    harness.ENGINES.use_manager(name)
                    return name
        if time.monotonic() > deadline:
            raise RuntimeError(f"no manager answers after {within:.0f} s")
        time.sleep(1)


def point_at_cluster() -> None:
    harness.ENGINES.point_at({name: v["ansible_host"] for name, v in hosts("swarm").items()})
    if not harness.ENGINES.manager:
        use_manager()


def nodes_view() -> list[dict[str, Any]]:
    return harness.docker_json_lines("node", "ls")


def node_line() -> str:
    return ", ".join(f"{n['Hostname']} {'/'.join(filter(None, (n['Status'], n['Availability'], n['ManagerStatus'])))}"
                     for n in nodes_view())


def logs_holding(*secrets: str) -> list[str]:
    """The playbook logs of this run that hold one of the values: none may (no_log on every task that handles
    a secret)."""
    return sorted(p.name for p in WORK.glob("ansible-*.log") if any(s in p.read_text() for s in secrets))


def vault_the_unlock_key() -> None:
    """What site.yml tells the operator when it turns autolock on: the swarm's unlock key is in a 0600 file
    next to the inventory, to be moved into the vault; the next run deletes the file."""
    if not UNLOCK_KEY_FILE.is_file():
        raise SystemExit(f"site.yml turned autolock on but wrote no unlock key to {UNLOCK_KEY_FILE}")
    mode = UNLOCK_KEY_FILE.stat().st_mode & 0o777
    if mode != 0o600:
        raise SystemExit(f"{UNLOCK_KEY_FILE} has mode {mode:o}, not 600")
    key = UNLOCK_KEY_FILE.read_text().strip()
    if not key.startswith("SWMKEY-") or logs_holding(key):
        raise SystemExit(f"not an unlock key, or in a playbook log: {logs_holding(key)}")
    write_vault({**read_vault(), "vault_swarm_unlock_key": key})
    say(f"  autolock on; the unlock key site.yml wrote to {UNLOCK_KEY_FILE.name} (mode 0600, in no log) moved "
        "into the vault")


def cmd_site() -> None:
    playbook("site.yml")
    vault_the_unlock_key()
    point_at_cluster()
    say(f"swarm: {node_line()}")
    elapsed = harness.wait_converged(harness.runnable_services(NOT_RUNNABLE), 300, "site.yml")
    say(f"every runnable service at its desired replicas and healthy {elapsed:.0f} s after the playbook; "
        f"not runnable offline (deployed, not waited for): {', '.join(NOT_RUNNABLE)}")


def tasks_on(node: str) -> list[str]:
    out = []
    for name in harness.stack_services():
        for task in harness.running(name):
            if harness.node_of(task) == node:
                out.append(name)
    return sorted(out)


def quiet_worker() -> str:
    """A worker without PostgreSQL, ingest-http or the devices' UDP target: removable under traffic.

    One that runs a NATS server if there is one, so that the playbook must replace it; with the
    migration to come (which replaces all three), one without, to spend the time once.
    """
    busy = {harness.node_of(t) for name in ("postgres", "ingest-http") for t in harness.running(name)}
    busy.add(udp_node())
    nats = {harness.node_of(t) for name in ("nats-1", "nats-2", "nats-3") for t in harness.running(name)}
    candidates = [name for name in reversed(list(hosts("workers"))) if name not in busy]
    if not candidates:
        raise RuntimeError("every worker is busy")
    want_nats = os.environ.get("PULSESTACK_PROOF_MIGRATE", "1") != "1"
    return next((name for name in candidates if (name in nats) == want_nats), candidates[0])


def udp_node() -> str:
    """The ingest node devices send to (DNS round robin gives each device one of them)."""
    return next(iter(hosts("ingest")))


async def under_traffic(window: int, fault: Callable[[], Awaitable[None]] | None = None,
                        seconds: float = 25.0) -> None:
    """A window's fleet sending to the ingest nodes as DNS round robin spreads devices over them."""
    await traffic.under_traffic(WINDOWS, window, fault, seconds, udp_host=harness.ENGINES.address(udp_node()),
                                follow=follow_ingest)


# ------------------------------------------------------------------------------------------- steps


async def cmd_delivery() -> None:
    point_at_cluster()
    await traffic.provision_all(WINDOWS)
    say(f"{len(WINDOWS.names)} fleets of {traffic.DEVICES} devices registered")
    await traffic.wait_ingesters_know(WINDOWS, 90)
    await under_traffic(0)


async def kill_manager() -> None:
    # The Raft leader: the harder case, a new leader must be elected before the swarm acts again.
    victim = next(n["Hostname"] for n in nodes_view() if n["ManagerStatus"] == "Leader")
    hosted = tasks_on(victim)
    started = time.monotonic()
    await asyncio.to_thread(host_docker, "kill", victim)
    say(f"  killed the VM {victim}, the Raft leader (SIGKILL to its systemd; it ran {', '.join(hosted) or 'no task'})")
    await asyncio.to_thread(use_manager, {victim})

    def marked_down() -> bool:
        return any(n["Hostname"] == victim and n["Status"] == "Down" for n in nodes_view())

    await harness.eventually(lambda: asyncio.to_thread(marked_down), 120, f"{victim} marked Down")
    say(f"  {victim} marked Down after {time.monotonic() - started:.0f} s; the managers still answer "
        f"(quorum 2 of 3): {await asyncio.to_thread(node_line)}")
    runnable = harness.runnable_services(NOT_RUNNABLE)
    elapsed = await asyncio.to_thread(harness.wait_converged, runnable, 240, "services without the killed manager")
    say(f"  every runnable service running and healthy without {victim} ({elapsed:.0f} s)")
    await asyncio.to_thread(host_docker, "start", victim)
    await asyncio.to_thread(wait_for_ssh, [victim])

    def local_state() -> str:
        return host_docker("exec", victim, "docker", "info", "--format", "{{.Swarm.LocalNodeState}}",
                           check=False).strip()

    # Autolock: the restarted manager's engine comes up locked, and only the vault's key brings it back.
    await harness.eventually(lambda: asyncio.to_thread(lambda: local_state() == "locked"), 120, f"{victim} locked")
    say(f"  {victim} started again: its engine is locked (autolock); unlock.yml unlocks it with the vault's key")
    log = await asyncio.to_thread(playbook, "unlock.yml")
    if not any(recap_changes(log).values()):
        raise SystemExit(f"unlock.yml unlocked nothing, yet {victim} was locked")

    def rejoined() -> bool:
        return any(n["Hostname"] == victim and n["Status"] == "Ready" and n["ManagerStatus"] == "Reachable"
                   for n in nodes_view())

    back = time.monotonic()
    await harness.eventually(lambda: asyncio.to_thread(rejoined), 180, f"{victim} rejoined")
    say(f"  {victim} started again and rejoined as a reachable manager after {time.monotonic() - back:.0f} s")
    await asyncio.to_thread(harness.wait_converged, runnable, 240, "services after the manager returned")


async def remove_add_node() -> None:
    worker = await asyncio.to_thread(quiet_worker)
    hosted = await asyncio.to_thread(tasks_on, worker)
    await asyncio.to_thread(playbook, "remove-node.yml", "-e", f"node={worker}")
    names = [n["Hostname"] for n in await asyncio.to_thread(nodes_view)]
    if worker in names:
        raise SystemExit(f"{worker} is still in the swarm after remove-node.yml: {names}")
    left = [s for s in await asyncio.to_thread(tasks_on, worker)]
    say(f"  {worker} removed; it ran {', '.join(hosted)}; now on it: {left or 'nothing'}; swarm: "
        f"{await asyncio.to_thread(node_line)}")
    await asyncio.to_thread(playbook, "add-node.yml", "-e", f"node={worker}")
    say(f"  {worker} back: {await asyncio.to_thread(node_line)}")


async def scale_1_3_1() -> None:
    for replicas in (3, 1):
        await asyncio.to_thread(playbook, "scale.yml", "-e", "service=raw-processor,api",
                                "-e", f"replicas={replicas}")
        counts = {s: harness.running_tasks(s) for s in ("raw-processor", "api")}
        if set(counts.values()) != {replicas}:
            raise SystemExit(f"after scale.yml to {replicas}: {counts}")
        say(f"  processor and API at {replicas} replicas: {counts}")


# ----------------------------------------------------------------------------------- backup, restore


S3_ENDPOINT = f"http://{GATEWAY}:{S3_PORT}"
BACKUP_BUCKET = "pulsestack-backups"


def s3_client() -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="fr-par", aws_access_key_id=S3StandIn.ACCESS[0],
                        aws_secret_access_key=S3StandIn.ACCESS[1])  # moto takes any


def cmd_s3() -> None:
    """moto in server mode, standing in for Scaleway's object storage, on this machine's address on the nodes'
    network: PostgreSQL's containers archive WAL into one bucket, backup.yml (on this control machine) puts its
    dumps in another. It outlives this command (deploy/cluster-proof.sh's clean step stops it by its pid file)."""
    server = S3StandIn(harness.ARCHIVE_BUCKET, WORK / "moto.log", host=GATEWAY, port=S3_PORT)
    server.start()
    assert server.process is not None
    (WORK / "moto.pid").write_text(f"{server.process.pid}\n")
    s3_client().create_bucket(Bucket=BACKUP_BUCKET, CreateBucketConfiguration={"LocationConstraint": "fr-par"})
    say(f"S3 stand-in at {S3_ENDPOINT}: buckets {harness.ARCHIVE_BUCKET} (WAL archive), {BACKUP_BUCKET} (dumps)")


COUNTED = ("devices", "readings", "gaps", "device_state")


async def table_counts() -> dict[str, int]:
    conn = await harness.db("pulsestack_owner", "postgres_owner_password")
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in COUNTED}
    finally:
        await conn.close()


async def lose_a_fleet() -> int:
    """What a restore is for: an operator's mistake deletes one window's readings."""
    fleets = WINDOWS.fleet(0)
    ids = [i for fleet in fleets.values() for i in fleet]
    conn = await harness.db("pulsestack_owner", "postgres_owner_password")
    try:
        status = await conn.execute("DELETE FROM readings WHERE device IN"
                                    " (SELECT id FROM devices WHERE device_id = ANY($1::text[]))", ids)
        return int(status.split()[-1])
    finally:
        await conn.close()


def cmd_backup_restore() -> None:
    point_at_cluster()
    before = asyncio.run(table_counts())
    say(f"  rows before the backup: {before}")
    playbook("backup.yml")
    objects = [o["Key"] for o in s3_client().list_objects_v2(Bucket=BACKUP_BUCKET).get("Contents", [])]
    if not any(key.endswith(".dump") for key in objects):
        raise SystemExit(f"backup.yml left no dump in the bucket: {objects}")
    say(f"  in the bucket: {', '.join(objects)}")
    deleted = asyncio.run(lose_a_fleet())
    if not deleted:
        raise SystemExit("no row of window 0's fleet to delete: the restore would prove nothing")
    damaged = asyncio.run(table_counts())
    say(f"  {deleted} rows of window 0's fleet deleted: {damaged}")
    playbook("restore-dump.yml")
    after = asyncio.run(table_counts())
    if after != before:
        raise SystemExit(f"restore-dump.yml did not bring the database back: before {before}, after {after}")
    say(f"  restored from the bucket: {after} (as before the backup)")


# ----------------------------------------------------------------------------------- database node lost


async def readings_count() -> int:
    conn = await harness.db("pulsestack_reader", "postgres_reader_password")
    try:
        return int(await conn.fetchval("SELECT count(*) FROM readings"))
    finally:
        await conn.close()


async def first_growth(every: float = 1.0) -> float:
    """When the restored database first stores a new reading: the first count that grows over the count before
    it. Started after the loss, so both counts are the restored database's."""
    previous = None
    while True:
        try:
            count = await readings_count()
        except Exception:  # the database is away or still recovering
            count = None
        if count is not None:
            if previous is not None and count > previous:
                return time.time()
            previous = count
        await asyncio.sleep(every)


async def lose_database() -> None:
    """The database node deleted for good under traffic (its VM and its disk), and restore.yml onto another
    worker: the newest base backup, the archived WAL, then the replay from RAW_REPLAY; the traffic window then
    checks that every reading acknowledged to a device is stored exactly once. Prints the RPO (what the
    archive lacked at the loss) and the RTO (loss to readings stored again)."""
    victim = harness.node_of(harness.running("postgres")[0])
    ready = {n["Hostname"] for n in await asyncio.to_thread(nodes_view) if n["Status"] == "Ready"}
    target = next(n for n in [*hosts("workers"), *hosts("swarm")] if n in ready and n not in {victim, udp_node()})
    before = await readings_count()
    await asyncio.to_thread(host_docker, "rm", "-f", victim)
    killed = time.time()
    await asyncio.to_thread(host_docker, "volume", "rm", f"{victim}-docker", check=False)
    say(f"  deleted the VM {victim} and its disk, with PostgreSQL and {before:,} readings stored")
    if victim in hosts("managers"):
        await asyncio.to_thread(use_manager, {victim})
    storing = asyncio.create_task(first_growth())
    # The replay's margin: the raw stage's backlog at the restored point, seconds here (every window ends drained).
    # The default 15 min would reach back before this young cluster's RAW_REPLAY existed, which the playbook
    # rightly refuses: it cannot tell that nothing was acknowledged before.
    log = await asyncio.to_thread(playbook, "restore.yml", "-e", f"node={target}", "-e", f"lost={victim}",
                                  "-e", "postgres_backup_replay_margin_minutes=2")
    said = " ".join(log.split())  # the callback folds a long message over lines
    restored_at = re.search(r"restored to (\S+);", said)
    replayed = re.search(r"stored (\d+) readings the restore lacked \((\d+) were there\)", said)
    if not restored_at or not replayed:
        raise SystemExit("restore.yml did not say where it restored to and what the replay stored")
    stored_again = await asyncio.wait_for(storing, 300)
    point = restored_at.group(1)
    rpo = (f"{killed - datetime.fromisoformat(point).timestamp():.0f} s of commits (restored to {point})"
           if point[0].isdigit() else "nothing after the base backup")
    say(f"  PostgreSQL restored onto {target}; RPO: the archive lacked {rpo}, and the replay from RAW_REPLAY stored "
        f"{int(replayed.group(1)):,} readings the restore lacked ({int(replayed.group(2)):,} it held); RTO: "
        f"readings stored again {stored_again - killed:.0f} s after the loss (devices were acknowledged throughout)")


# ----------------------------------------------------------------------------------------- migration


async def follow_ingest(simulation: Simulation) -> None:
    """What DNS round robin and the load balancer do for devices while nodes come and go: send to a node
    whose ingester runs."""
    while True:
        try:
            nodes = await asyncio.to_thread(lambda: [harness.node_of(t) for t in harness.running("ingest-udp")])
            current = harness.ENGINES.address(next(n for n in hosts("ingest") if n in nodes))
            http = await asyncio.to_thread(harness.address_of, "ingest-http")
        except (RuntimeError, StopIteration):
            await asyncio.to_thread(use_manager)  # the manager we asked may be the one leaving
        else:
            if simulation.nbiot.target[0] != current:
                simulation.nbiot.target = (current, harness.UDP_PORT)
                say(f"  devices now send to {current} (an ingest node with a running ingest-udp)")
            base = f"http://{http}:{harness.HTTP_PORT}"
            for protocol, path in ((sigfox.PROTOCOL, sigfox.CALLBACK_PATH), (lorawan.PROTOCOL, lorawan.CALLBACK_BASE)):
                client = simulation.callbacks[protocol]
                if client.url != base + path:
                    client.url = base + path
                    say(f"  the network servers now call {client.url}")
        await asyncio.sleep(2)


async def migrate() -> None:
    old = set(hosts("swarm"))
    await asyncio.to_thread(cmd_inventory, 2, 1)
    point_at_cluster()
    new = [n for n in hosts("swarm") if n not in old]
    await asyncio.to_thread(cmd_boot)
    say(f"  second generation up (Terraform: generation = 2, retiring_generation = 1): {', '.join(new)}")
    await asyncio.to_thread(playbook, "migrate-node-type.yml")
    await asyncio.to_thread(use_manager, set(hosts("retiring")))
    left = {n["Hostname"] for n in await asyncio.to_thread(nodes_view)}
    if left & old or set(new) - left:
        raise SystemExit(f"after migrate-node-type.yml the swarm is {sorted(left)}")
    say(f"  the swarm runs on the second generation only: {await asyncio.to_thread(node_line)}")


def retire_old_generation() -> None:
    """Terraform: retiring_generation = null, apply (the old VMs are deleted), inventory written again."""
    old = set(hosts("retiring"))
    cmd_inventory(2, None)
    for name in old:
        host_docker("rm", "-f", name)
        host_docker("volume", "rm", f"{name}-docker", check=False)
    point_at_cluster()
    say(f"  old generation deleted: {', '.join(sorted(old))}")


def cmd_again() -> None:
    point_at_cluster()
    changes = recap_changes(playbook("site.yml"))
    changed = {host: n for host, n in changes.items() if n}
    if not changes or changed:
        raise SystemExit(f"site.yml is not idempotent: changed tasks per host {changed or changes}")
    say(f"second site.yml: changed=0 on all {len(changes)} hosts")
    if UNLOCK_KEY_FILE.exists():
        raise SystemExit(f"{UNLOCK_KEY_FILE} is still there, though the vault holds the unlock key")
    vault = read_vault()
    # Certificates are public; a key or a token file is looked for line by line (a log would escape its newlines).
    vaulted = [vault["vault_swarm_unlock_key"], vault["vault_nats_admin_password"],
               vault["vault_nats_system_password"], vault["vault_backup_s3_secret_key"],
               *(value for name, value in vault["vault_stack_secrets"].items() if not name.endswith("_cert"))]
    pieces = {line.strip() for value in vaulted for line in value.splitlines()
              if len(line.strip()) >= 16 and not line.startswith("-----")}
    leaked = logs_holding(*pieces)
    if leaked:
        raise SystemExit(f"a secret of the vault is in the playbook logs {leaked}")
    say(f"none of the vault's {len(vaulted)} secrets in the run's {len(list(WORK.glob('ansible-*.log')))} "
        "playbook logs")


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    args = sys.argv[2:]
    if command == "inventory":
        cmd_inventory(int(args[0]), int(args[1]) if len(args) > 1 else None)
    elif command == "boot":
        cmd_boot()
    elif command == "vars":
        cmd_vars()
    elif command == "site":
        cmd_site()
    elif command == "delivery":
        asyncio.run(cmd_delivery())
    elif command == "kill-manager":
        point_at_cluster()
        asyncio.run(under_traffic(1, kill_manager))
    elif command == "remove-add-node":
        point_at_cluster()
        asyncio.run(under_traffic(2, remove_add_node))
    elif command == "scale":
        point_at_cluster()
        asyncio.run(under_traffic(3, scale_1_3_1))
    elif command == "migrate":
        point_at_cluster()
        asyncio.run(under_traffic(4, migrate))
        retire_old_generation()
    elif command == "backup-restore":
        cmd_backup_restore()
    elif command == "again":
        cmd_again()
    elif command == "s3":
        cmd_s3()
    elif command == "lose-database":
        point_at_cluster()
        asyncio.run(under_traffic(5, lose_database))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
