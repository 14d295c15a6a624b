"""Limits of the SSH gateway: open sessions per user and per deployment, failed logins per address."""

import time
from collections import defaultdict, deque
from dataclasses import dataclass

from deployments.ssh.authorise import Refused, Target


@dataclass
class Limits:
    per_user: int
    per_deployment: int
    idle_timeout: float
    failures_per_minute: int


class Registry:
    """Open sessions and recent authentication failures, for the limits (one gateway process)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.by_user: dict[int, int] = defaultdict(int)
        self.by_deployment: dict[int, int] = defaultdict(int)
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def open(self, target: Target) -> None:
        if self.by_user[target.user_id] >= self.limits.per_user:
            raise Refused(f"You already have {self.limits.per_user} SSH sessions open; close one first.")
        if self.by_deployment[target.deployment_id] >= self.limits.per_deployment:
            raise Refused(f"This deployment already has {self.limits.per_deployment} SSH sessions open; try again later.")
        self.by_user[target.user_id] += 1
        self.by_deployment[target.deployment_id] += 1

    def close(self, target: Target) -> None:
        self.by_user[target.user_id] -= 1
        self.by_deployment[target.deployment_id] -= 1

    def failed(self, address: str) -> None:
        self.failures[address].append(time.monotonic())

    def blocked(self, address: str) -> bool:
        recent = self.failures.get(address)
        if recent is None:
            return False
        while recent and recent[0] < time.monotonic() - 60:
            recent.popleft()
        if not recent:
            del self.failures[address]  # forget addresses that behave
        return len(recent) >= self.limits.failures_per_minute
