"""The local runtime: deployments as supervised processes on this machine (the embedded default)."""
