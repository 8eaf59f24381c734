"""The proofs that the stack runs: `swarm` on this machine's swarm (deploy/swarm-proof.sh), `cluster` on six
simulated VMs configured by the Ansible playbooks (deploy/cluster-proof.sh), which drives the swarm proof's
traffic and checks on them; `terraform_offline` lays those VMs out as Terraform would. Run from the repository's
root: `python -m deploy.proof.swarm STEP`, `python -m deploy.proof.cluster STEP`."""
