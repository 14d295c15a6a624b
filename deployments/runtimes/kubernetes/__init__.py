"""The Kubernetes runtime: one namespace per deployment, all calls through client.py."""
