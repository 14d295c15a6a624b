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


def test_the_stored_tree_reads_back_as_it_was_written() -> None:
    from deployments.status import store

    tree = derive(obs(), "running", True, "", (BuildInfo("a" * 40, "succeeded", 100, is_release=True),))
    tree = tree.__class__(**{**tree.__dict__, "containers": (ItemState("web", G, "running", restarts=2, started_at=1764000000.5),)})
    stored = store.to_json(tree)
    assert stored["tree"]["containers"] == [
        {"name": "web", "colour": "green", "message": "running", "restarts": 2, "started_at": 1764000000.5}
    ]
    back = store.from_json(stored)
    assert back == tree
    assert store.to_json(back) == stored


def test_trees_stored_in_the_earlier_positional_format_still_read() -> None:
    from deployments.status import store

    old = {
        "colour": "yellow",
        "reason": "web: starting",
        "tree": {"containers": [["web", "pending", "starting"]], "storage": [["d", "green", "ok", 1, 5.0]]},
    }
    tree = store.from_json(old)
    assert (tree.colour, tree.reason) == (Y, "web: starting")
    assert tree.containers == (ItemState("web", P, "starting"),)
    assert tree.storage == (ItemState("d", G, "ok", restarts=1, started_at=5.0),)
    assert store.from_json(None) == store.from_json({}) and store.from_json(None).reason == "Waiting for the monitor"


@pytest.mark.parametrize(
    "state, enabled, reason, stored, expected",
    [
        ("deleting", True, "", G, (P, "Deleting…")),
        ("failed", True, "stack file broken", G, (R, "Error")),
        ("pending", True, "", None, (P, "Provisioning…")),
        ("provisioning", True, "", G, (P, "Provisioning…")),
        ("building", True, "", G, (P, "Building…")),
        ("stopped", False, "", G, (P, "Stopped")),
        ("running", False, "", G, (P, "Stopped")),
        ("running", True, "", G, (G, "Running")),
        ("running", True, "", Y, (Y, "Possible issues")),
        ("running", True, "", R, (R, "Error")),
        ("running", True, "", None, (G, "Running")),
        ("running", True, "fetch failed; still running abc", None, (Y, "Possible issues")),
        ("running", True, "", P, (G, "Running")),
    ],
)
def test_lists_and_the_overview_follow_one_colour_ladder(state, enabled, reason, stored, expected) -> None:
    from deployments.status.tree import WORDS, summary

    assert summary(state, enabled, reason, stored) == expected
    # the Overview's colour for the same state agrees with the list's, whatever the observation says
    tree = derive(obs(containers=(("web", R),)), state, enabled, reason)
    if expected[0] == P or state == "failed":
        assert tree.colour == expected[0]
    assert set(WORDS) == {G, Y, R}
