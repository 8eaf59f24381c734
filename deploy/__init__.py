"""Deploy tooling in Python: the proofs that run the stack on a real swarm (`deploy.proof`)."""
