"""From what the runtime observed (and the latest build) to the status tree and one overall colour.

A pure function: no database, no runtime; the dashboard, the CLI and the monitor all use it.
"""

from dataclasses import dataclass, field

from deployments.runtimes.base import Colour, ItemState, Observation


@dataclass(frozen=True)
class BuildInfo:
    commit: str
    status: str  # queued | running | succeeded | failed
    progress: int = 0
    error: str = ""
    is_release: bool = False


@dataclass(frozen=True)
class StatusTree:
    colour: Colour
    reason: str
    storage: tuple[ItemState, ...] = ()
    builds: tuple[ItemState, ...] = ()
    containers: tuple[ItemState, ...] = ()
    services: tuple[ItemState, ...] = ()
    branches: tuple[str, ...] = field(default=("storage", "builds", "containers", "services"))


def build_item(build: BuildInfo) -> ItemState:
    name = f"build {build.commit[:10]}"
    if build.status == "failed":
        return ItemState(name, Colour.RED, build.error or "failed")
    if build.status in ("queued", "running"):
        return ItemState(name, Colour.PENDING, f"building, {build.progress}%")
    return ItemState(name, Colour.GREEN, "current release" if build.is_release else "built")


def derive(observation: Observation, state: str, enabled: bool, state_reason: str = "", builds: tuple[BuildInfo, ...] = ()) -> StatusTree:
    """Green: working. Yellow: something is wrong but it still runs. Red: a bigger problem."""
    build_items = tuple(build_item(b) for b in builds)
    tree = dict(storage=observation.storage, builds=build_items, containers=observation.containers, services=observation.services)

    def result(colour: Colour, reason: str) -> StatusTree:
        return StatusTree(colour, reason, **tree)

    if state == "deleting":
        return result(Colour.PENDING, "Deleting…")
    if state == "failed":
        return result(Colour.RED, state_reason or "Failed")
    if state in ("pending", "provisioning", "building"):
        latest = builds[0] if builds else None
        if state == "building" and latest:
            return result(Colour.PENDING, f"Building {latest.commit[:10]} ({latest.progress}%)")
        return result(Colour.PENDING, "Provisioning…")
    if not enabled:
        return result(Colour.PENDING, "Stopped")

    down = [c for c in observation.containers if c.colour == Colour.RED]
    if down:
        return result(Colour.RED, "; ".join(f"{c.name}: {c.message}" for c in down))
    storage = [s for s in observation.storage if s.colour == Colour.RED]
    if storage:
        return result(Colour.RED, "; ".join(f"storage {s.name}: {s.message}" for s in storage))
    starting = [c for c in observation.containers if c.colour in (Colour.PENDING, Colour.YELLOW)]
    if starting:
        return result(Colour.YELLOW, "; ".join(f"{c.name}: {c.message}" for c in starting))
    unhealthy = [s for s in observation.services if s.colour != Colour.GREEN]
    if unhealthy:
        return result(Colour.YELLOW, "; ".join(f"{s.name}: {s.message}" for s in unhealthy))
    if builds and builds[0].status == "failed":
        return result(Colour.YELLOW, f"The latest build failed ({builds[0].error}); the previous release is still running")
    if state_reason:
        return result(Colour.YELLOW, state_reason)
    return result(Colour.GREEN, "Running")
