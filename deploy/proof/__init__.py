"""The proofs that the stack runs: `swarm` on this machine's swarm (deploy/swarm-proof.sh), `cluster` on six
simulated VMs configured by the Ansible playbooks (deploy/cluster-proof.sh). Both stand on `harness` (where the
swarm is, its tasks, NATS, PostgreSQL and Prometheus as a proof reaches them) and `traffic` (a window's fleet
driven while a fault happens, every acknowledged reading checked to be stored once); `terraform_offline` lays
the cluster's VMs out as Terraform would. Run from the repository's root: `python -m deploy.proof.swarm STEP`,
`python -m deploy.proof.cluster STEP`."""
