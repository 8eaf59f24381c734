"""Terraform's own node layout and Ansible inventory, evaluated without providers.

Providers cannot be downloaded on the machines that test pulsestack, so `terraform plan` cannot run. What
can run is `terraform console` on a provider-free copy of the configuration: variables.tf, the node layout
(the first `locals` block of main.tf), the inventory locals of outputs.tf, and the inventory template, with
each node's public IP given by an expression instead of a Scaleway resource. The ops tests use it to check
the layout and the inventory; the cluster proof (deploy/cluster-proof.sh) uses it to write the inventory of
its simulated nodes, so they are laid out and addressed exactly as Terraform would lay out real ones.

    python -m deploy.proof.terraform_offline inventory -var private_network_cidr=10.213.0.0/22 ... > hosts.yml
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "terraform"
TEMPLATE = TF_DIR / "templates" / "inventory.yml.tftpl"
# TEST-NET-1: documentation addresses, for the example inventory.
EXAMPLE_PUBLIC_IP = 'cidrhost("192.0.2.0/24", i + 1)'
# A simulated node is reached on its private address.
PRIVATE_AS_PUBLIC_IP = "local.nodes[name].private_ip"


def terraform_binary() -> str | None:
    candidate = Path(sys.executable).parent / "terraform"
    return str(candidate) if candidate.exists() else shutil.which("terraform")


def tf_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_INPUT": "0"})
    return env


def block(text: str, start: int) -> str:
    """The balanced {...} or (...) that opens at or after `start`, from `start` on."""
    opening = min(i for i in (text.find("{", start), text.find("(", start)) if i >= 0)
    pairs = {"{": "}", "(": ")"}
    open_char, close_char = text[opening], pairs[text[opening]]
    depth = 0
    in_string = False
    i = opening
    while i < len(text):
        char = text[i]
        if in_string:
            if char == "\\":
                i += 2
                continue
            if char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == open_char:
            depth += 1
        elif char == close_char:
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
        i += 1
    raise ValueError("unbalanced block")


def console(
    workdir: Path, expression: str, variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    terraform = terraform_binary()
    if terraform is None:
        raise FileNotFoundError("terraform is not installed (see .ci/tools-cluster.sh)")
    args = [terraform, "console", "-no-color"]
    for key, value in (variables or {}).items():
        args += ["-var", f"{key}={value}"]
    return subprocess.run(
        args, cwd=workdir, input=expression + "\n", capture_output=True, text=True, env=tf_env(), timeout=120
    )


def console_text(workdir: Path, expression: str, variables: dict[str, str] | None = None) -> str:
    """Evaluates a string expression; base64 keeps it on one output line."""
    result = console(workdir, f"base64encode({expression})", variables)
    if result.returncode != 0:
        raise RuntimeError(result.stderr + result.stdout)
    line = result.stdout.strip().splitlines()[-1].strip().strip('"')
    if line == "(known after apply)":
        raise RuntimeError(f"{expression} is unknown: a variable without a default was not given")
    return base64.b64decode(line).decode("utf-8")


def layout_config(workdir: Path, public_ip: str = EXAMPLE_PUBLIC_IP) -> Path:
    """Writes the provider-free copy into workdir/tf. `public_ip` is an expression of `i` (the node's index
    in name order) and `name` that stands in for the node's public IP resource."""
    work = workdir / "tf"
    (work / "templates").mkdir(parents=True)
    shutil.copy(TF_DIR / "variables.tf", work / "variables.tf")
    shutil.copy(TEMPLATE, work / "templates" / TEMPLATE.name)
    main = (TF_DIR / "main.tf").read_text()
    outputs = (TF_DIR / "outputs.tf").read_text()
    layout = block(main, main.index("locals {"))
    inventory_locals = block(outputs, outputs.index("locals {"))
    resource = "scaleway_instance_ip.node[name].address"
    if resource not in inventory_locals:
        raise ValueError(f"outputs.tf no longer reads {resource}: adapt terraform_offline.py")
    inventory_locals = inventory_locals.replace(resource, "local.offline_public_ips[name]")
    volume = "scaleway_block_volume.data[name].id"
    if volume not in inventory_locals:
        raise ValueError(f"outputs.tf no longer reads {volume}: adapt terraform_offline.py")
    inventory_locals = inventory_locals.replace(volume, '""')  # simulated nodes have no block volume
    stub = (
        "locals {\n"
        f"  offline_public_ips = {{ for i, name in sort(keys(local.nodes)) : name => {public_ip} }}\n"
        "}\n"
    )
    (work / "layout.tf").write_text(layout + "\n\n" + inventory_locals + "\n\n" + stub)
    return work


def inventory_expression() -> str:
    outputs = (TF_DIR / "outputs.tf").read_text()
    body = block(outputs, outputs.index('output "ansible_inventory"'))
    return block(body, body.index("templatefile("))


def render_inventory(workdir: Path, variables: dict[str, str], public_ip: str = EXAMPLE_PUBLIC_IP) -> str:
    work = layout_config(workdir, public_ip)
    # The console reads one line at a time: the multi-line expression goes into a file.
    (work / "render.tf").write_text(f"locals {{\n  offline_rendered_inventory = {inventory_expression()}\n}}\n")
    return console_text(work, "local.offline_rendered_inventory", variables)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] != "inventory" or len(args[1:]) % 2:
        raise SystemExit("usage: terraform_offline.py inventory [-var name=value ...]")
    variables = {}
    for flag, assignment in zip(args[1::2], args[2::2], strict=True):
        if flag != "-var" or "=" not in assignment:
            raise SystemExit(f"expected -var name=value, got {flag} {assignment}")
        key, value = assignment.split("=", 1)
        variables[key] = value
    with tempfile.TemporaryDirectory() as workdir:
        sys.stdout.write(render_inventory(Path(workdir), variables, PRIVATE_AS_PUBLIC_IP))


if __name__ == "__main__":
    main()
