"""From what the runtime observed (and the latest builds) to the status tree and one overall colour.

Pure functions: no database, no runtime. The one colour rule lives here: `by_state` decides while
the deployment's state says it all (deleting, failed, provisioning, building, stopped); otherwise
the observation does (`derive`). Lists show the same colour with a word (`summary`).
"""

from dataclasses import dataclass

from deployments.runtimes.base import Colour, ItemState, Observation

BRANCHES = ("storage", "builds", "containers", "services")
WORDS = {Colour.GREEN: "Running", Colour.YELLOW: "Possible issues", Colour.RED: "Error"}


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
    branches: tuple[str, ...] = BRANCHES


def build_item(build: BuildInfo) -> ItemState:
    name = f"build {build.commit[:10]}"
    if build.status == "failed":
        return ItemState(name, Colour.RED, build.error or "failed")
    if build.status in ("queued", "running"):
        return ItemState(name, Colour.PENDING, f"building, {build.progress}%")
    return ItemState(name, Colour.GREEN, "current release" if build.is_release else "built")


def by_state(state: str, enabled: bool, state_reason: str = "", latest: BuildInfo | None = None) -> tuple[Colour, str] | None:
    """The colour and reason when the deployment's state decides them; None when it runs and the
    observation must."""
    if state == "deleting":
        return Colour.PENDING, "Deleting…"
    if state == "failed":
        return Colour.RED, state_reason or "Failed"
    if state == "building":
        return Colour.PENDING, f"Building {latest.commit[:10]} ({latest.progress}%)" if latest else "Building…"
    if state in ("pending", "provisioning"):
        return Colour.PENDING, "Provisioning…"
    if state == "stopped" or not enabled:
        return Colour.PENDING, "Stopped"
    return None


def by_observation(observation: Observation, state_reason: str, builds: tuple[BuildInfo, ...]) -> tuple[Colour, str]:
    """Green: working. Yellow: something is wrong but it still runs. Red: a bigger problem."""
    down = [c for c in observation.containers if c.colour == Colour.RED]
    if down:
        return Colour.RED, "; ".join(f"{c.name}: {c.message}" for c in down)
    storage = [s for s in observation.storage if s.colour == Colour.RED]
    if storage:
        return Colour.RED, "; ".join(f"storage {s.name}: {s.message}" for s in storage)
    starting = [c for c in observation.containers if c.colour in (Colour.PENDING, Colour.YELLOW)]
    if starting:
        return Colour.YELLOW, "; ".join(f"{c.name}: {c.message}" for c in starting)
    unhealthy = [s for s in observation.services if s.colour != Colour.GREEN]
    if unhealthy:
        return Colour.YELLOW, "; ".join(f"{s.name}: {s.message}" for s in unhealthy)
    if builds and builds[0].status == "failed":
        return Colour.YELLOW, f"The latest build failed ({builds[0].error}); the previous release is still running"
    if state_reason:
        return Colour.YELLOW, state_reason
    return Colour.GREEN, "Running"


def derive(observation: Observation, state: str, enabled: bool, state_reason: str = "", builds: tuple[BuildInfo, ...] = ()) -> StatusTree:
    colour, reason = by_state(state, enabled, state_reason, builds[0] if builds else None) or by_observation(
        observation, state_reason, builds
    )
    items = tuple(build_item(b) for b in builds)
    return StatusTree(colour, reason, observation.storage, items, observation.containers, observation.services)


def summary(state: str, enabled: bool, state_reason: str, stored: Colour | None) -> tuple[Colour, str]:
    """Colour and word for lists: from the state, else the colour the monitor stored last."""
    decided = by_state(state, enabled, state_reason)
    if decided:
        colour, reason = decided
        return colour, WORDS.get(colour, reason)
    if stored is None or stored == Colour.PENDING:
        stored = Colour.YELLOW if state_reason else Colour.GREEN
    return stored, WORDS[stored]
