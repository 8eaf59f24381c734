#!/usr/bin/env bash
# Installs what tests/ops/test_terraform.py and tests/ops/test_ansible.py need
# beyond PyPI on a fresh Debian machine, as root. Safe to run again: it does
# nothing when the tools are already there.
#
# - git: ansible-lint lists the project's files with it.
# - terraform: not packaged by Debian, and HashiCorp's download site is not
#   reachable from these machines, so it cannot be installed here. The
#   machine image ships it (/usr/local/bin/terraform); where it is missing the
#   Terraform tests skip, or fail with PULSESTACK_REQUIRE_ALL=1.
# The Python tools (ansible, ansible-lint, python-hcl2, pyyaml) come from
# PyPI with the project's other test dependencies.
set -euo pipefail
. "$(dirname "$0")/apt.sh"

if ! command -v git >/dev/null 2>&1; then
    apt_install tools-cluster git || exit 0
fi

echo "tools-cluster: $(git --version)"
if command -v terraform >/dev/null 2>&1; then
    echo "tools-cluster: $(terraform version 2>/dev/null | head -n1)"
else
    echo "tools-cluster: terraform not found (not installable from the reachable registries);" \
        "the Terraform tests skip (fail with PULSESTACK_REQUIRE_ALL=1)" >&2
fi
