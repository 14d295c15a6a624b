"""The status tree and overall colour, derived without any runtime."""

import re

import pytest

from deployments.runtimes.base import Colour, ItemState, Observation
from deployments.status.tree import VOCABULARY, BuildInfo, Headline, derive, headline

G, Y, R, P = Colour.GREEN, Colour.YELLOW, Colour.RED, Colour.PENDING


def obs(containers=(("web", G), ("redis", G)), services=(("web", G), ("redis", G)), storage=(("redis/data", G),)) -> Observation:
    return Observation(
        storage=tuple(ItemState(n, c, "m") for n, c in storage),
        containers=tuple(ItemState(n, c, f"{n} is {c.value}") for n, c in containers),
        services=tuple(ItemState(n, c, f"{n} answers {c.value}") for n, c in services),
    )


@pytest.mark.parametrize(
    "observation, state, enabled, reason, builds, word, why",
    [
        (obs(), "running", True, "", (), "Running", "Every process runs and answers"),
        (obs(containers=(("web", R), ("redis", G))), "running", True, "", (), "Failed", "web: web is red"),
        (obs(containers=(("web", P), ("redis", G))), "running", True, "", (), "Starting", "web: web is pending"),
        (obs(services=(("web", Y), ("redis", G))), "running", True, "", (), "Unhealthy", "web: web answers yellow"),
        (obs(services=(("web", R), ("redis", G))), "running", True, "", (), "Unhealthy", "web: web answers red"),
        (obs(storage=(("redis/data", R),)), "running", True, "", (), "Failed", "storage redis/data: m"),
        (
            obs(),
            "running",
            True,
            "",
            (BuildInfo("b" * 40, "failed", 30, "install failed: pip"), BuildInfo("a" * 40, "succeeded", 100, is_release=True)),
            "Running",
            "The latest build failed (install failed: pip); the previous release is still running",
        ),
        (obs(), "running", True, "could not fetch; still running abc", (), "Running", "could not fetch; still running abc"),
        (obs(), "failed", True, "stack file broken", (), "Failed", "stack file broken"),
        (obs(), "building", True, "", (BuildInfo("c" * 40, "running", 45),), "Building", "Commit cccccccccc: building, 45%"),
        (obs(), "provisioning", True, "", (), "Updating", "Applying the change"),  # what runs keeps serving meanwhile
        (obs(containers=()), "provisioning", True, "", (), "Starting", "Making its processes and storage"),
        (obs(containers=(("web", P), ("redis", P))), "stopped", False, "", (), "Stopped", "Disabled: enable it to start it again"),
        (obs(containers=(("web", R),)), "deleting", True, "", (), "Deleting", "Removing its processes, storage and routes"),
    ],
)
def test_one_word_colour_and_reason_for_each_state(observation, state, enabled, reason, builds, word, why) -> None:
    tree = derive(observation, state, enabled, reason, builds)
    said = headline(tree, state, enabled, reason)
    assert (said.word, said.reason) == (word, why)
    assert (tree.colour, tree.reason) == (VOCABULARY[word][0], why)  # what the monitor stores says the same
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
    assert store.from_json(None) == store.from_json({}) and store.from_json(None).reason == "Waiting for the monitor's first look"


@pytest.mark.parametrize("state", ["pending", "provisioning", "building", "running", "stopped", "failed", "deleting"])
@pytest.mark.parametrize("enabled", [True, False])
def test_the_stored_tree_says_what_the_monitor_derived_whatever_the_state_now(state, enabled) -> None:
    """The Overview and the lists read the stored tree with the state as it is now: while the state has
    not changed since the monitor's look, they say what the monitor said; once it has, the state decides."""
    from deployments.status import store

    observed = obs(containers=(("web", G), ("redis", R)))
    stored = store.from_json(store.to_json(derive(observed, "running", True)))
    now = headline(stored, state, enabled)
    assert now == headline(derive(observed, state, enabled), state, enabled)
    if state == "running" and enabled:
        assert (now.word, now.reason) == ("Failed", "redis: redis is red")


def test_before_the_monitors_first_look_a_running_deployment_is_starting() -> None:
    from deployments.status import store

    assert headline(store.from_json(None), "running", True) == Headline("Starting", "Waiting for the monitor's first look")
    assert headline(store.from_json({}), "stopped", True).word == "Stopped"


def test_the_readme_lists_every_word_with_its_colour_and_meaning() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = re.findall(r"^\| \*\*(\w+)\*\* \| (\w+) \| (.+?) \|$", readme, re.M)
    dots = {Colour.GREEN: "green", Colour.YELLOW: "yellow", Colour.RED: "red", Colour.PENDING: "grey"}
    assert rows == [(word, dots[colour], meaning) for word, (colour, meaning) in VOCABULARY.items()]


@pytest.mark.parametrize(
    "from_state, to_state, word",
    [
        ("pending", "provisioning", "Starting"),
        ("running", "provisioning", "Updating"),
        ("building", "pending", "Updating"),
        ("provisioning", "running", "Running"),
        ("running", "building", "Building"),
        ("running", "stopped", "Stopped"),
        ("provisioning", "failed", "Failed"),
        ("running", "deleting", "Deleting"),
    ],
)
def test_the_history_names_each_change_with_a_word_of_the_table(from_state, to_state, word) -> None:
    from deployments.status.tree import transition_word

    assert transition_word(from_state, to_state) == word and word in VOCABULARY


@pytest.mark.django_db
def test_a_containers_restarts_are_said_once_on_the_overview(cast) -> None:
    from deployments.models import Deployment, State
    from deployments.status import store

    base = derive(obs(), "running", True, "", ())
    items = (
        ItemState("web", G, "running, restarted 3×", restarts=3),
        ItemState("redis", Colour.PENDING, "starting", restarts=2),
    )
    tree = base.__class__(**{**base.__dict__, "containers": items})
    d = Deployment.objects.create(project=cast.project, name="Dev", slug="dev", branch="main", state=State.RUNNING)
    Deployment.objects.filter(pk=d.pk).update(status=store.to_json(tree))
    page = cast.client(cast.owner).get(f"/projects/{cast.project.slug}/d/dev/").content.decode()
    assert "running, restarted 3×" in page and "3 restarts" not in page  # not "restarted 3× · 3 restarts"
    assert "starting · 2 restarts" in page  # where the message does not say it, the count does
