"""Websockets: who may connect, and fragments arriving after an event published by another process."""

import asyncio
import subprocess
import sys

import pytest
from channels.testing import WebsocketCommunicator

from deployments.models import Deployment, State
from diploi.asgi import application
from tests.conftest import BASE_DIR

pytestmark = [pytest.mark.django_db(transaction=True)]


def session_cookie(user) -> bytes:
    """A real session, as the browser would carry it after logging in."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def connect(user, deployment_id: int, origin: bytes = b"http://localhost") -> tuple[WebsocketCommunicator, bool]:
    from asgiref.sync import sync_to_async

    headers = [(b"origin", origin), (b"host", b"localhost")]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    communicator = WebsocketCommunicator(application, f"/ws/deployments/{deployment_id}/", headers=headers)
    connected, _ = await communicator.connect(timeout=10)
    return communicator, connected


def running(cast) -> Deployment:
    """A development deployment of the sample, provisioned and answering."""
    from deployments.actions import do_create_deployment
    from deployments.provisioning import tasks
    from tests.conftest import http_get, wait_until

    d = do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
    tasks.provision(d.pk)
    d.refresh_from_db()
    wait_until(lambda: http_get(d.endpoints["web"]), what="the page")
    return d


@pytest.fixture
def dev(cast) -> Deployment:
    return Deployment.objects.create(
        project=cast.project, name="Dev", slug="dev", branch="main", state=State.RUNNING, commit=cast.project.stack_commit
    )


@pytest.mark.asyncio
async def test_anonymous_and_outsiders_are_refused(cast, dev, runtime, redis_layer) -> None:
    for user in (None, cast.outsider):
        communicator, connected = await connect(user, dev.pk)
        assert not connected
    communicator, connected = await connect(cast.viewer, 999999)
    assert not connected


@pytest.mark.asyncio
async def test_a_foreign_origin_is_refused(cast, dev, runtime, redis_layer) -> None:
    communicator, connected = await connect(cast.owner, dev.pk, origin=b"http://evil.example")
    assert not connected


@pytest.mark.asyncio
async def test_a_member_gets_fragments_after_an_event_from_another_process(cast, dev, runtime, redis_layer) -> None:
    communicator, connected = await connect(cast.viewer, dev.pk)
    assert connected
    first = await communicator.receive_from(timeout=10)  # the current state, at once
    assert f'id="deployment-{dev.pk}-live"' in first and f'id="deployment-{dev.pk}-status"' in first

    # The state changes; another process (as the worker or the monitor would) publishes through Redis.
    from asgiref.sync import sync_to_async

    await sync_to_async(Deployment.objects.filter(pk=dev.pk).update)(state_reason="from afar")
    script = f"from deployments.live.events import publish; import sys; sys.exit(0 if publish({dev.pk}, 'status') else 1)"
    env = {
        "REDIS_URL": redis_layer,
        "DJANGO_SETTINGS_MODULE": "diploi.settings",
        "PATH": "/usr/bin:/bin",
        "DIPLOI_DATA_DIR": str(runtime.data_dir),
    }
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    fragment = await communicator.receive_from(timeout=10)
    assert fragment.lstrip().startswith(f'<div id="deployment-{dev.pk}-live">') and "from afar" in fragment
    for part in ("status", "cpu", "hosts", "tree"):
        assert f'id="deployment-{dev.pk}-{part}"' in fragment
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_a_removed_member_stops_receiving(cast, dev, runtime, redis_layer) -> None:
    from asgiref.sync import sync_to_async

    from deployments.live.events import publish
    from projects.models import Membership

    communicator, connected = await connect(cast.viewer, dev.pk)
    assert connected
    await communicator.receive_from(timeout=10)
    await sync_to_async(Membership.objects.filter(user=cast.viewer).delete)()  # announces itself: no other event needed
    output = await communicator.receive_output(timeout=10)
    assert output == {"type": "websocket.close", "code": 4403}
    await communicator.disconnect()  # what the browser does: the consumer leaves its group and ends
    again, connected = await connect(cast.viewer, dev.pk)
    assert not connected
    await again.disconnect()
    await sync_to_async(publish)(dev.pk, "status")  # nothing breaks for the others


@pytest.mark.asyncio
async def test_many_sockets_share_one_render_per_event(cast, dev, runtime, redis_layer, monkeypatch) -> None:
    """Viewers and developers on one deployment: the producer renders the event's snapshot once, the
    sockets only fetch it and each gets its role's fragment; without it, they render it once."""
    from asgiref.sync import sync_to_async

    from deployments.live import consumers, fragments
    from deployments.live.events import publish
    from diploi import shared

    calls, produced, delivered = [], [], []
    real = consumers.deployment_snapshot
    monkeypatch.setattr(consumers, "deployment_snapshot", lambda pk: calls.append(pk) or real(pk))
    monkeypatch.setattr(fragments, "deployment_snapshot", lambda pk, **kw: produced.append(pk) or real(pk, **kw))
    deliver = consumers.Hub.deliver
    monkeypatch.setattr(consumers.Hub, "deliver", lambda hub, event: delivered.append(event["seq"]) or deliver(hub, event))
    # connected all at once: the process's hub still makes one channel and joins the group once
    sockets = [s for s, _ in await asyncio.gather(*(connect(user, dev.pk) for user in [cast.viewer, cast.developer] * 5))]
    firsts = [await s.receive_from(timeout=10) for s in sockets]
    assert len(calls) == 10  # one per connect: each socket starts from the current state
    hub = consumers._hubs[asyncio.get_running_loop()]
    assert len(hub.sockets[f"deployment.{dev.pk}"]) == 10  # the process's hub is the group's one member
    assert all("Nothing running yet" in f for f in firsts)

    async def change(message: str) -> list[str]:
        status = {"colour": "red", "reason": f"web: {message}", "tree": {"containers": [["web", "red", message]]}}
        await sync_to_async(Deployment.objects.filter(pk=dev.pk).update)(status=status)
        await sync_to_async(publish)(dev.pk, "status")
        return [await s.receive_from(timeout=10) for s in sockets]

    updates = await change("exited")
    assert (len(produced), len(calls)) == (1, 10)  # rendered once, by the producer, for all ten sockets
    assert len(delivered) == 1  # the event reached the process once, not once per socket
    assert all("web: exited" in u for u in updates)
    assert all("Restart" not in u for u in updates[::2]) and all("Restart" in u for u in updates[1::2])
    await sync_to_async(publish)(dev.pk, "status")  # nothing changed: nothing is sent
    assert all([await s.receive_nothing(timeout=0.5) for s in sockets])

    monkeypatch.setattr(shared, "get", lambda key: None)  # the snapshot is gone (Redis away, expired)
    updates = await change("crashed again")
    assert len(calls) == 11 and all("web: crashed again" in u for u in updates)  # the sockets rendered it, once
    for s in sockets:
        await s.disconnect()
    assert f"deployment.{dev.pk}" not in hub.sockets  # the last socket gone, the hub left the group


@pytest.mark.asyncio
async def test_a_snapshot_read_before_the_one_shown_is_not_shown(cast, dev, runtime, redis_layer) -> None:
    """Two producers: the monitor reads a deployment at 0 %, a build moves it to 25 % and publishes, then
    the monitor's event arrives. The socket keeps 25 % (the bar of a build never goes back)."""
    from asgiref.sync import sync_to_async
    from channels.layers import get_channel_layer

    from deployments.live import events
    from deployments.live.fragments import deployment_snapshot
    from deployments.models import Build
    from diploi import shared

    build = await sync_to_async(Build.objects.create)(deployment=dev, commit="c0ffee", status="running", progress=0)
    communicator, connected = await connect(cast.viewer, dev.pk)
    assert connected
    assert "· 0%" in await communicator.receive_from(timeout=10)
    read_early = await sync_to_async(deployment_snapshot)(dev.pk, fresh=True)  # the monitor's read

    await sync_to_async(Build.objects.filter(pk=build.pk).update)(progress=25)
    await sync_to_async(events.publish)(dev.pk, events.BUILD)
    assert "· 25%" in await communicator.receive_from(timeout=10)

    await sync_to_async(Build.objects.filter(pk=build.pk).update)(progress=50)  # the early read still says 0 %
    await sync_to_async(shared.put)("snapshot:early", read_early, 60)
    event = {"type": "live.event", "group": events.group(dev.pk), "kind": events.STATUS, "seq": "early", "snapshot": "snapshot:early"}
    await get_channel_layer().group_send(events.group(dev.pk), event)
    assert await communicator.receive_nothing(timeout=1)

    await sync_to_async(events.publish)(dev.pk, events.BUILD)  # a later read is shown
    assert "· 50%" in await communicator.receive_from(timeout=10)
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_the_monitor_stores_status_and_pushes_it_live(cast, runtime, redis_layer, monkeypatch) -> None:
    from datetime import timedelta

    from asgiref.sync import sync_to_async

    from deployments.status import samples
    from deployments.status.monitor import Monitor
    from tests.conftest import wait_until

    # a sample a second, not every 10 s: a deployment answers while its processes still start (they have
    # no figures yet), and the graphs' first points come from a later look
    monkeypatch.setattr(samples, "SAMPLE_EVERY", timedelta(seconds=1))

    d = await sync_to_async(running)(cast)
    communicator, connected = await connect(cast.viewer, d.pk)
    assert connected
    await communicator.receive_from(timeout=10)

    monitor = Monitor()

    def green() -> bool:
        monitor.tick()
        status = Deployment.objects.get(pk=d.pk).status
        graphed = set(d.usage.values_list("container", flat=True)) == {"web", "redis"}
        return status.get("colour") == "green" and status["reason"] == "Every process runs and answers" and graphed and status

    status = await sync_to_async(wait_until)(green, what="the monitor to store green")
    assert [c["name"] for c in status["tree"]["containers"]] == ["web", "redis"]
    assert all(c["colour"] == "green" for c in status["tree"]["containers"])
    fragment = await communicator.receive_from(timeout=10)
    assert f'id="deployment-{d.pk}-cpu"' in fragment
    assert all(c["started_at"] for c in status["tree"]["containers"])  # start times are kept with the tree
    while "<strong>Running</strong>" not in fragment:  # earlier ticks' fragments may still be queued
        fragment = await communicator.receive_from(timeout=10)
    assert " · up " in fragment
    assert await sync_to_async(d.samples.count)() >= 1
    points = await sync_to_async(list)(d.usage.values_list("container", "step", "memory_bytes"))  # the graphs' points, per container
    assert {(container, step) for container, step, _ in points} == {("web", 10), ("redis", 10)} and all(m > 0 for *_, m in points)
    await communicator.disconnect()


def test_the_monitor_stops_cleanly_on_sigterm(tmp_path) -> None:
    import os
    import signal
    import time

    env = {**os.environ, "DIPLOI_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=BASE_DIR, env=env, check=True, capture_output=True)
    command = [sys.executable, "manage.py", "monitor", "--interval", "1"]
    proc = subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline()  # its handlers are in place once it says what it does (a busy machine starts slowly)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    out = first + out
    assert proc.returncode == 0, out
    assert "monitor: observing every 1 s" in out and "monitor: stopped" in out


def test_with_redis_gone_pages_render_and_producers_carry_on(cast, runtime, settings) -> None:
    from channels.layers import channel_layers

    from deployments.live.events import publish
    from tests.conftest import free_port

    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]}}
    }
    channel_layers.backends.clear()
    try:
        d = Deployment.objects.create(project=cast.project, name="Dev", slug="dev", branch="main", state=State.PENDING)
        d.transition(State.RUNNING, "test")  # publishes on commit: must not raise
        assert publish(d.pk, "status") is False
        page = cast.client(cast.viewer).get("/projects/shop/d/dev/")
        assert page.status_code == 200 and "Live updates paused" in page.content.decode()
    finally:
        channel_layers.backends.clear()


def test_producers_publish_over_one_connection_also_in_a_forked_process(cast, dev, redis_layer) -> None:
    """A producer keeps one loop, so one connection to the layer, for all its events; a forked child
    (a worker's pool process) makes its own."""
    import os

    import redis

    from deployments.live.events import STATUS, publish

    server = redis.Redis.from_url(redis_layer)
    assert publish(dev.pk, STATUS)
    before = server.info("stats")["total_connections_received"]
    assert all(publish(dev.pk, STATUS) for _ in range(20))
    assert server.info("stats")["total_connections_received"] - before <= 1
    child = os.fork()
    if child == 0:  # nobody watches the group: the child only publishes (no database)
        os._exit(0 if publish(dev.pk, STATUS) else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0


def test_a_crash_is_announced_at_once(cast, data_dir, redis_url, monkeypatch) -> None:
    import psutil
    import redis

    from deployments.actions import do_create_deployment
    from deployments.provisioning import tasks
    from deployments.runtimes import get_runtime
    from deployments.runtimes.local.events import CHANNEL
    from tests.conftest import http_get, wait_until

    monkeypatch.setenv("REDIS_URL", redis_url)  # supervisord and its listener inherit it
    runtime = get_runtime()
    try:
        d = do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
        tasks.provision(d.pk)
        d.refresh_from_db()
        wait_until(lambda: http_get(d.endpoints["web"]), what="the page")
        pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(CHANNEL)
        name = f"d{d.pk}-web"
        wrapper = psutil.Process(runtime.supervisor.process_info()[f"{name}:{name}"]["pid"])
        next(p for p in wrapper.children(recursive=True) if p.name().startswith("python")).kill()
        seen = []
        wait_until(
            lambda: (
                (m := pubsub.get_message(timeout=1))
                and seen.append(m["data"].decode()) is None
                and any(s.startswith(f"{name} PROCESS_STATE_") and ("EXITED" in s or "BACKOFF" in s) for s in seen)
            ),
            timeout=20,
            what="the crash announcement",
        )
        pubsub.close()
    finally:
        runtime.supervisor.shutdown()


@pytest.mark.asyncio
async def test_the_project_page_list_is_live_for_members_only(cast, runtime, redis_layer) -> None:
    from asgiref.sync import sync_to_async

    from deployments.live.events import publish_project

    async def project_socket(user):
        headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
        if user is not None:
            headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
        communicator = WebsocketCommunicator(application, "/ws/projects/shop/", headers=headers)
        connected, _ = await communicator.connect(timeout=10)
        return communicator, connected

    for user in (None, cast.outsider):
        assert not (await project_socket(user))[1]
    communicator, connected = await project_socket(cast.viewer)
    assert connected
    assert f'id="project-{cast.project.pk}-deployments"' in await communicator.receive_from(timeout=10)
    await sync_to_async(Deployment.objects.create)(project=cast.project, name="New one", slug="new-one", branch="main")
    await sync_to_async(publish_project)(cast.project.pk)
    assert "New one" in await communicator.receive_from(timeout=10)
    await communicator.disconnect()


def test_one_broken_deployment_does_not_stop_the_monitor(cast, runtime, monkeypatch) -> None:
    from deployments.status.monitor import Monitor

    good = Deployment.objects.create(
        project=cast.project, name="Good", slug="good", branch="main", state=State.RUNNING, commit=cast.project.stack_commit
    )
    bad = Deployment.objects.create(
        project=cast.project, name="Bad", slug="bad", branch="main", state=State.RUNNING, commit=cast.project.stack_commit
    )
    monitor = Monitor()
    real = monitor.spec
    monkeypatch.setattr(monitor, "spec", lambda d: (_ for _ in ()).throw(RuntimeError("broken")) if d.pk == bad.pk else real(d))
    assert monitor.tick() == 1
    assert Deployment.objects.get(pk=good.pk).status["colour"] == "red"  # observed: nothing runs for it
    assert Deployment.objects.get(pk=bad.pk).status == {}


def test_the_live_fragment_follows_every_change_it_shows(cast, runtime, monkeypatch) -> None:
    from deployments.live import fragments
    from deployments.models import Build, Domain, Sample

    renders = []
    real = fragments.render_to_string
    monkeypatch.setattr(fragments, "render_to_string", lambda *a: renders.append(a[0]) or real(*a))

    d = Deployment.objects.create(
        project=cast.project,
        name="Dev",
        slug="dev",
        branch="main",
        state=State.RUNNING,
        status={"colour": "green", "reason": "Running", "tree": {"containers": [["web", "green", "running"]]}},
    )

    def fragment() -> str:
        from deployments.access import get_deployment_by_id_for_user

        return fragments.live_fragment(get_deployment_by_id_for_user(cast.viewer, d.pk))

    first = fragment()
    assert "<strong>Running</strong>" in first and "web" in first
    assert fragment() == first and len(renders) == 1  # rendered once for many viewers
    Sample.objects.create(deployment=d, cpu_percent=42.5, memory_bytes=1 << 20)
    assert "42.5%" in fragment()
    build = Build.objects.create(deployment=d, commit="c" * 40, status="running", progress=37)
    assert 'aria-valuenow="37"' in fragment()
    build.append_log("".join(f"line {i}\n" for i in range(20)))
    build.save()
    tail = fragment()
    assert "line 19" in tail and "line 8\n" in tail and "line 7\n" not in tail  # the last twelve, as the build prints them
    Domain.objects.create(deployment=d, name="shop.example.com")
    assert "https://shop.example.com" in fragment()
    Deployment.objects.filter(pk=d.pk).update(
        status={"colour": "red", "reason": "web: exited", "tree": {"containers": [["web", "red", "exited"]]}}
    )
    assert "<strong>Failed</strong> — web: exited" in fragment()


@pytest.mark.asyncio
async def test_logs_stream_over_the_socket_to_members_only(cast, runtime, redis_layer) -> None:
    import urllib.error

    from asgiref.sync import sync_to_async

    from projects.models import Membership
    from tests.conftest import http_get

    d = await sync_to_async(running)(cast)

    async def log_socket(user, service: str = "web"):
        headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
        if user is not None:
            headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
        communicator = WebsocketCommunicator(application, f"/ws/deployments/{d.pk}/logs/{service}/", headers=headers)
        return communicator, (await communicator.connect(timeout=10))[0]

    for user in (None, cast.outsider):
        assert not (await log_socket(user))[1]
    assert not (await log_socket(cast.viewer, "nope"))[1]
    communicator, connected = await log_socket(cast.viewer)
    assert connected
    first = await communicator.receive_from(timeout=10)
    assert f'<pre class="log" id="deployment-{d.pk}-log" hx-swap-oob="innerHTML">' in first and "Listening on port" in first

    def visit() -> None:
        try:
            http_get(d.endpoints["web"] + "/?marker=streamed<line>")
        except urllib.error.HTTPError:  # the sample answers 404 to a query string; the request is logged all the same
            pass

    await sync_to_async(visit)()
    while "streamed" not in (message := await communicator.receive_from(timeout=10)):
        pass
    assert 'hx-swap-oob="beforeend"' in message
    assert "<line>" not in message  # lines are text, never markup

    await sync_to_async(Membership.objects.filter(user=cast.viewer).delete)()
    output = await communicator.receive_output(timeout=10)
    while output["type"] != "websocket.close":
        output = await communicator.receive_output(timeout=10)
    assert output["code"] == 4403


def test_a_monitor_tick_costs_the_same_queries_for_any_number_and_tells_only_what_moved(cast, runtime, monkeypatch) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from deployments.live import events
    from deployments.status.monitor import Monitor

    published = []
    monkeypatch.setattr(events, "publish_many", lambda ids, projects, kind=events.STATUS: published.append((sorted(ids), projects)))

    def add(count: int) -> list[int]:
        start = Deployment.objects.count()
        return [
            Deployment.objects.create(
                project=cast.project, name=f"D{i}", slug=f"d{i}", branch="main", state=State.RUNNING, commit=cast.project.stack_commit
            ).pk
            for i in range(start, start + count)
        ]

    def steady_tick() -> int:
        with CaptureQueriesContext(connection) as queries:
            monitor.tick()
        return len(queries)

    monitor = Monitor()
    three = add(3)
    monitor.tick()  # first sight: status stored, a sample kept, everyone told
    assert published[-1] == (three, [cast.project.pk])
    few = steady_tick()
    assert published[-1] == ([], [])  # nothing moved: nobody is told
    twelve = three + add(9)
    monitor.tick()
    assert published[-1][0] == sorted(set(twelve) - set(three))
    assert steady_tick() == few  # no query per deployment


@pytest.mark.asyncio
async def test_installations_on_two_databases_of_one_redis_do_not_hear_each_other(redis_url: str) -> None:
    """Pub/sub ignores the database number: the layer's prefix keeps the events of an installation
    on database 1 away from one on database 2 of the same server."""
    from urllib.parse import urlsplit

    from channels_redis.pubsub import RedisPubSubChannelLayer

    from diploi.settings import redis_channel_layer

    def layer(database: int) -> RedisPubSubChannelLayer:
        url = urlsplit(redis_url)._replace(path=f"/{database}").geturl()
        return RedisPubSubChannelLayer(**redis_channel_layer(url)["default"]["CONFIG"])

    ours, theirs = layer(1), layer(2)
    mine, other = await ours.new_channel(), await theirs.new_channel()
    await ours.group_add("deployment.1", mine)
    await theirs.group_add("deployment.1", other)
    await theirs.group_send("deployment.1", {"type": "live.event", "kind": "status"})
    assert (await asyncio.wait_for(theirs.receive(other), 5))["kind"] == "status"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ours.receive(mine), 0.5)
    await ours.flush()
    await theirs.flush()
