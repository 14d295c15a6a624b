"""The resource graphs' points (deployments/status/usage.py): raw points per container, rolled up into
per-minute and per-10-minute averages, each tier kept for its own time; and the JSON the Overview's
graphs read, for members only."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from deployments.models import Deployment, Usage
from deployments.status.usage import ROWS_PER_CONTAINER, TIERS, WINDOWS, roll_up, series

NOW = datetime(2026, 12, 3, 12, 0, 5, tzinfo=UTC)


@pytest.fixture
def prod(cast) -> Deployment:
    return Deployment.objects.create(project=cast.project, name="Prod", slug="prod", stage="production", branch="main")


def raw(d: Deployment, container: str, at: datetime, cpu: float, memory: int) -> Usage:
    return Usage(deployment=d, container=container, step=10, at=at, cpu_percent=cpu, memory_bytes=memory)


def test_raw_points_are_averaged_per_minute_and_per_10_minutes_once(prod) -> None:
    start = NOW - timedelta(minutes=12, seconds=5)  # 11:48:00
    points = [raw(prod, "web", start + timedelta(seconds=10 * i), cpu=i % 6, memory=100 + 2 * (i % 6)) for i in range(6 * 12)]
    points += [raw(prod, "redis", start + timedelta(seconds=10 * i), cpu=1.0, memory=50) for i in range(6 * 12) if i % 2]
    Usage.objects.bulk_create(points)

    written = roll_up(NOW)
    minutes = Usage.objects.filter(step=60, container="web").order_by("at")
    assert [m.at for m in minutes] == [start + timedelta(minutes=i) for i in range(12)]  # 12:00 is not complete
    assert {(m.cpu_percent, m.memory_bytes) for m in minutes} == {(2.5, 105)}  # the means of each minute's six
    assert Usage.objects.filter(step=60, container="redis").count() == 12
    tens = Usage.objects.filter(step=600).order_by("at", "container")
    at = [datetime(2026, 12, 3, 11, 40, tzinfo=UTC), datetime(2026, 12, 3, 11, 50, tzinfo=UTC)]
    assert [(t.at, t.container) for t in tens] == [(at[0], "redis"), (at[0], "web"), (at[1], "redis"), (at[1], "web")]
    assert tens.get(at=at[1], container="web").cpu_percent == 2.5  # 11:40–11:50 is complete in time, with only two minutes of points
    assert written == 12 * 2 + 4

    assert roll_up(NOW) == 0  # done once: nothing again
    Usage.objects.create(deployment=prod, container="web", step=10, at=NOW, cpu_percent=7, memory_bytes=7)
    assert roll_up(NOW + timedelta(seconds=55)) == 1  # 12:00–12:01, once complete
    assert Usage.objects.get(step=60, at=NOW - timedelta(seconds=5)).cpu_percent == 7


def test_each_tier_is_kept_for_its_own_time(prod) -> None:
    for tier in TIERS:
        edge = NOW - tier.keep
        Usage.objects.bulk_create(
            Usage(deployment=prod, container="web", step=tier.step, at=edge + timedelta(seconds=s), cpu_percent=1, memory_bytes=1)
            for s in (-tier.step, tier.step)
        )
    roll_up(NOW)
    kept = {(u.step, u.at) for u in Usage.objects.filter(container="web")}
    for tier in TIERS:
        assert (tier.step, NOW - tier.keep - timedelta(seconds=tier.step)) not in kept
        assert (tier.step, NOW - tier.keep + timedelta(seconds=tier.step)) in kept
    assert ROWS_PER_CONTAINER == 360 + 1440 + 1008


def test_a_window_reads_its_tier_with_every_container_on_the_same_times(prod) -> None:
    Usage.objects.bulk_create(
        [
            raw(prod, "web", NOW - timedelta(seconds=30), 1.25, 10),
            raw(prod, "web", NOW - timedelta(seconds=20), 2.0, 20),
            raw(prod, "redis", NOW - timedelta(seconds=20), 0.5, 5),
            raw(prod, "web", NOW - timedelta(minutes=5), 9.0, 90),  # outside the minute
            Usage(deployment=prod, container="web", step=60, at=NOW - timedelta(hours=2), cpu_percent=3, memory_bytes=30),
        ]
    )
    minute = series(prod, WINDOWS["1m"], NOW)
    t1, t2 = int((NOW - timedelta(seconds=30)).timestamp()), int((NOW - timedelta(seconds=20)).timestamp())
    assert minute["times"] == [t1, t2] and minute["containers"] == ["redis", "web"]
    assert minute["cpu"] == [[None, 0.5], [1.2, 2.0]] and minute["memory"] == [[None, 5], [10, 20]]
    assert series(prod, WINDOWS["1h"], NOW)["times"][0] == int((NOW - timedelta(minutes=5)).timestamp())
    day = series(prod, WINDOWS["1d"], NOW)  # its averages, then the raw points not averaged yet
    assert day["step"] == 60 and day["times"][0] == int((NOW - timedelta(hours=2)).timestamp())
    assert day["cpu"] == [[None, None, None, 0.5], [3.0, 9.0, 1.2, 2.0]] and len(day["times"]) == 4
    week = series(prod, WINDOWS["7d"], NOW)  # nothing per 10 minutes yet: the finer tiers
    assert week["times"] == day["times"]


def test_the_graphs_points_are_for_members_only(cast, prod, client) -> None:
    Usage.objects.create(deployment=prod, container="web", step=10, at=NOW, cpu_percent=1, memory_bytes=1)
    url = "/projects/shop/d/prod/usage/"
    client.force_login(cast.outsider)
    assert client.get(url).status_code == 404
    client.force_login(cast.viewer)
    answer = client.get(url, {"window": "7d"})
    assert answer.status_code == 200 and answer.json()["step"] == 600
    bad = client.get(url, {"window": "2y"})
    assert bad.status_code == 400 and "1m, 1h, 1d, 7d" in bad.json()["error"]
    client.logout()
    assert client.get(url).status_code == 302


def test_the_graphs_points_cost_the_same_queries_for_few_and_many_points(cast, prod, client) -> None:
    client.force_login(cast.viewer)

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get("/projects/shop/d/prod/usage/", {"window": "1h"}).status_code == 200
        return len(ctx)

    queries()  # the session and the user, read once
    few = queries()
    now = timezone.now()
    Usage.objects.bulk_create(raw(prod, c, now - timedelta(seconds=10 * i), 1, 1) for i in range(300) for c in ("web", "redis", "db"))
    assert len(client.get("/projects/shop/d/prod/usage/", {"window": "1h"}).json()["times"]) == 300
    assert queries() == few
