"""From what the runtime observed (and the latest builds) to the status tree, and the one word every
surface says of a deployment.

Pure functions: no database, no runtime. The one rule lives in `headline`: the deployment's state
decides while it says it all (deleting, failed, building, starting or updating, stopped); otherwise
the monitor's last look (the tree) does. The Overview, the project list, the CLI and the API all show
`headline`'s word, with its colour and one line of reason.
"""

from dataclasses import dataclass, replace

from deployments.runtimes.base import REFUSED_RELEASE, Colour, ItemState, Observation

BRANCHES = ("storage", "builds", "containers", "services")

# The words, each with its colour and what it means (README's table is checked against this one).
VOCABULARY: dict[str, tuple[Colour, str]] = {
    "Running": (Colour.GREEN, "Every process runs and every service answers its health check."),
    "Starting": (Colour.YELLOW, "Its processes and storage are being made or are coming up; nothing serves yet."),
    "Updating": (Colour.YELLOW, "A change (a restart, a new release, new settings) is being applied to what runs."),
    "Building": (Colour.YELLOW, "A release is being built; what ran before keeps running."),
    "Unhealthy": (Colour.YELLOW, "It runs, but a service does not answer its health check."),
    "Stopped": (Colour.PENDING, "Disabled or stopped: nothing runs until it is enabled again."),
    "Failed": (Colour.RED, "It could not be started, or a process or its storage is down."),
    "Deleting": (Colour.PENDING, "Its processes, storage and routes are being removed."),
}
WAITING = "Waiting for the monitor's first look"


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
    observed: bool = True  # False: the monitor has not looked yet (nothing stored)


@dataclass(frozen=True)
class Headline:
    """One word of the vocabulary and one line of why."""

    word: str
    reason: str

    @property
    def colour(self) -> Colour:
        return VOCABULARY[self.word][0]


def build_item(build: BuildInfo) -> ItemState:
    name = f"build {build.commit[:10]}"
    if build.status == "failed":
        return ItemState(name, Colour.RED, build.error or "failed")
    if build.status in ("queued", "running"):
        return ItemState(name, Colour.PENDING, f"building, {build.progress}%")
    return ItemState(name, Colour.GREEN, "current release" if build.is_release else "built")


def by_state(state: str, enabled: bool, state_reason: str, tree: StatusTree) -> Headline | None:
    """The headline when the deployment's state decides it; None when it runs and the tree must."""
    if state == "deleting":
        return Headline("Deleting", state_reason or "Removing its processes, storage and routes")
    if state == "failed":
        return Headline("Failed", state_reason or "It could not be started")
    if state == "building":
        latest = tree.builds[0] if tree.builds and tree.builds[0].colour == Colour.PENDING else None
        return Headline("Building", f"Commit {latest.name.removeprefix('build ')}: {latest.message}" if latest else "Building the release")
    if state in ("pending", "provisioning"):
        if any(c.colour == Colour.GREEN for c in tree.containers):  # something serves while the change is applied
            return Headline("Updating", state_reason or "Applying the change")
        return Headline("Starting", state_reason or "Making its processes and storage")
    if state == "stopped" or not enabled:
        return Headline("Stopped", state_reason or ("Disabled: enable it to start it again" if not enabled else "Stopped"))
    return None


def by_observation(tree: StatusTree, state_reason: str) -> Headline:
    """A running deployment as the monitor saw it: down is Failed, coming up is Starting, a service
    that does not answer is Unhealthy, else Running (with what else is worth knowing)."""
    if not tree.observed:
        return Headline("Starting", WAITING)
    down = [c for c in tree.containers if c.colour == Colour.RED]
    if down:
        return Headline("Failed", "; ".join(f"{c.name}: {c.message}" for c in down))
    storage = [s for s in tree.storage if s.colour == Colour.RED]
    if storage:
        return Headline("Failed", "; ".join(f"storage {s.name}: {s.message}" for s in storage))
    starting = [c for c in tree.containers if c.colour in (Colour.PENDING, Colour.YELLOW)]
    if starting:
        return Headline("Starting", "; ".join(f"{c.name}: {c.message}" for c in starting))
    unhealthy = [s for s in tree.services if s.colour != Colour.GREEN]
    if unhealthy:
        return Headline("Unhealthy", "; ".join(f"{s.name}: {s.message}" for s in unhealthy))
    if tree.builds and tree.builds[0].colour == Colour.RED and REFUSED_RELEASE in tree.builds[0].message:
        return Headline("Unhealthy", tree.builds[0].message[0].upper() + tree.builds[0].message[1:])
    if tree.builds and tree.builds[0].colour == Colour.RED:
        return Headline("Running", f"The latest build failed ({tree.builds[0].message}); the previous release is still running")
    return Headline("Running", state_reason or "Every process runs and answers")


def transition_word(from_state: str, to_state: str) -> str:
    """The word of the vocabulary a state change moved to, as the History lists it (what the monitor
    then saw is not known there: running is Running)."""
    if to_state in ("pending", "provisioning"):
        return "Updating" if from_state in ("running", "building") else "Starting"
    return {"building": "Building", "stopped": "Stopped", "failed": "Failed", "deleting": "Deleting"}.get(to_state, "Running")


def headline(tree: StatusTree, state: str, enabled: bool, state_reason: str = "") -> Headline:
    """What every surface says of a deployment now: from its state, else from the tree."""
    return by_state(state, enabled, state_reason, tree) or by_observation(tree, state_reason)


def derive(observation: Observation, state: str, enabled: bool, state_reason: str = "", builds: tuple[BuildInfo, ...] = ()) -> StatusTree:
    items = tuple(build_item(b) for b in builds)
    tree = StatusTree(Colour.PENDING, "", observation.storage, items, observation.containers, observation.services)
    said = headline(tree, state, enabled, state_reason)
    return replace(tree, colour=said.colour, reason=said.reason)
