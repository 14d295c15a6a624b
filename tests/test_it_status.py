"""The status tree and overall colour, derived without any runtime."""

import pytest

from deployments.runtimes.base import Colour, ItemState, Observation
from deployments.status.tree import BuildInfo, derive

G, Y, R, P = Colour.GREEN, Colour.YELLOW, Colour.RED, Colour.PENDING


def obs(containers=(("web", G), ("redis", G)), services=(("web", G), ("redis", G)), storage=(("redis/data", G),)) -> Observation:
    return Observation(
        storage=tuple(ItemState(n, c, "m") for n, c in storage),
        containers=tuple(ItemState(n, c, f"{n} is {c.value}") for n, c in containers),
        services=tuple(ItemState(n, c, f"{n} answers {c.value}") for n, c in services),
    )


@pytest.mark.parametrize(
    "observation, state, enabled, reason, builds, colour, why",
    [
        (obs(), "running", True, "", (), G, "Running"),
        (obs(containers=(("web", R), ("redis", G))), "running", True, "", (), R, "web: web is red"),
        (obs(containers=(("web", P), ("redis", G))), "running", True, "", (), Y, "web: web is pending"),
        (obs(services=(("web", Y), ("redis", G))), "running", True, "", (), Y, "web: web answers yellow"),
        (obs(services=(("web", R), ("redis", G))), "running", True, "", (), Y, "web: web answers red"),
        (obs(storage=(("redis/data", R),)), "running", True, "", (), R, "storage redis/data: m"),
        (
            obs(),
            "running",
            True,
            "",
            (BuildInfo("b" * 40, "failed", 30, "install failed: pip"), BuildInfo("a" * 40, "succeeded", 100, is_release=True)),
            Y,
            "The latest build failed (install failed: pip); the previous release is still running",
        ),
        (obs(), "running", True, "could not fetch; still running abc", (), Y, "could not fetch; still running abc"),
        (obs(), "failed", True, "stack file broken", (), R, "stack file broken"),
        (obs(), "building", True, "", (BuildInfo("c" * 40, "running", 45),), P, "Building cccccccccc (45%)"),
        (obs(), "provisioning", True, "", (), P, "Provisioning…"),
        (obs(containers=(("web", P), ("redis", P))), "stopped", False, "", (), P, "Stopped"),
        (obs(containers=(("web", R),)), "deleting", True, "", (), P, "Deleting…"),
    ],
)
def test_it_derives_the_colour_and_the_reason(observation, state, enabled, reason, builds, colour, why) -> None:
    tree = derive(observation, state, enabled, reason, builds)
    assert (tree.colour, tree.reason) == (colour, why)
    assert tree.containers == observation.containers and tree.storage == observation.storage


def test_builds_become_items_of_the_tree() -> None:
    tree = derive(obs(), "running", True, "", (BuildInfo("b" * 40, "running", 60), BuildInfo("a" * 40, "succeeded", 100, is_release=True)))
    assert [(i.name, i.colour, i.message) for i in tree.builds] == [
        ("build bbbbbbbbbb", P, "building, 60%"),
        ("build aaaaaaaaaa", G, "current release"),
    ]


def test_uptime_reads_like_a_person_would_say_it() -> None:
    import time

    from deployments.web.templatetags.diploi import uptime

    now = time.time()
    assert uptime(now - 7500) == "2 h 5 min"
    assert uptime(now - 42) == "42 s"
    assert uptime(now - 3 * 86400 - 60) == "3 d 1 min"
    assert uptime(None) == ""
