"""The local runtime's router: each deployment by name over HTTPS (certificates verified: the
router's own CA for private names, Pebble's ACME for public ones), its pages for a deployment that does
not serve, and every route back after the router restarts."""

import ssl
from pathlib import Path

import pytest

from deployments import actions
from deployments.models import Deployment, State
from deployments.provisioning import tasks
from deployments.runtimes.local.router import Router
from deployments.status.monitor import Monitor
from tests.conftest import asking, https_request, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def deploy(cast, name: str, stage: str = "development") -> Deployment:
    d = actions.do_create_deployment(cast.project, name, stage, "main", actor=cast.developer)
    tasks.provision(d.pk)
    d.refresh_from_db()
    assert d.state == State.RUNNING, d.state_reason
    return d


def served(port: int, host: str, cafile: Path, marker: str = "Visits:") -> str:
    # (an ACME certificate on a loaded machine: Caddy's first order may come late, or be retried; CI
    # once saw none asked for within 30 s)
    return wait_until(
        lambda: (answer := https_request(port, host, cafile=cafile))[0] == 200 and marker in answer[2] and answer[2],
        timeout=120,
        interval=0.5,
        what=f"{host} to serve the deployment",
    )


def not_served(port: int, host: str, cafile: Path) -> bool:
    """The router has no route for the name: no certificate for it (the usual case once the name is gone
    from its configuration), or, with one still cached, only its page for names nobody serves."""
    try:
        status, _, body = https_request(port, host, cafile=cafile)
    except ssl.SSLError:
        return True
    return status == 404 and "Nothing is deployed here" in body


def test_each_public_port_has_a_host_name_served_over_https_with_the_routers_own_ca(cast, runtime, router, settings) -> None:
    port, root = settings.DIPLOI_HTTPS_PORT, router.router.root_certificate
    d = deploy(cast, "Dev")
    assert d.endpoints == {"web": f"https://dev--shop.localhost:{port}"}
    page = served(port, "dev--shop.localhost", root)
    assert "Stage: <span id='stage'>development</span>" in page
    served(port, "web--dev--shop.localhost", root)  # the component's own name
    with pytest.raises(ssl.SSLCertVerificationError):  # the verification is real: no public CA vouches for it
        https_request(port, "dev--shop.localhost")

    # The Overview says how to trust that CA, and hands out its root (to anyone: it is public).
    overview = cast.client(cast.viewer).get(d.get_absolute_url()).content.decode()
    assert 'href="/router/root.crt"' in overview and "update-ca-certificates" in overview
    download = cast.client(None).get("/router/root.crt")
    assert download.status_code == 200 and b"".join(download.streaming_content) == root.read_bytes()
    settings.DIPLOI_TLS = "acme"  # certificates from a public CA: nothing to trust, nothing handed out
    assert cast.client(None).get("/router/root.crt").status_code == 404
    settings.DIPLOI_TLS = "auto"

    # Plain HTTP is sent to HTTPS, port and path kept.
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", settings.DIPLOI_HTTP_PORT, timeout=5)
    conn.request("GET", "/a?b=1", headers={"Host": "dev--shop.localhost"})
    answer = conn.getresponse()
    assert answer.status == 308 and answer.getheader("Location") == f"https://dev--shop.localhost:{port}/a?b=1"

    # A name nobody serves gets no certificate, so no page of anybody's.
    with pytest.raises(ssl.SSLError):
        https_request(port, "nobody--shop.localhost", cafile=root)

    # Stopped: Diploi's page saying so, with a link to the deployment.
    actions.do_set_enabled(d, False, actor=cast.developer)
    tasks.set_enabled(d.pk)
    status, headers, body = https_request(port, "dev--shop.localhost", cafile=root)
    assert status == 503 and "dev is stopped" in body and f"https://localhost:{port}/projects/shop/d/dev/" in body
    assert headers["Content-Type"].startswith("text/html")
    actions.do_set_enabled(d, True, actor=cast.developer)
    tasks.set_enabled(d.pk)
    served(port, "dev--shop.localhost", root)

    # Its process not answering (stopped under the platform's feet): the page says so, no bare 502.
    for group in runtime.supervisor.groups_with_prefix(runtime.layout.group(_spec(d))):
        runtime.supervisor.stop_group(group)
    status, _, body = https_request(port, "dev--shop.localhost", cafile=root)
    assert status == 502 and "dev is not answering" in body


def _spec(d: Deployment):
    from deployments.provisioning.spec import current_spec

    return current_spec(Deployment.objects.get(pk=d.pk))


def test_a_restarted_router_gets_every_route_back_from_the_database(cast, runtime, router, settings) -> None:
    port, root = settings.DIPLOI_HTTPS_PORT, router.router.root_certificate
    first, second = deploy(cast, "One"), deploy(cast, "Two")
    actions.do_set_enabled(second, False, actor=cast.developer)
    tasks.set_enabled(second.pk)
    served(port, "one--shop.localhost", root)

    router.kill()  # as a crash would: nothing is saved on the way out
    router.start()
    assert not Router(settings.DATA_DIR).synced()
    with pytest.raises(OSError):  # its ports open but nothing served (no TLS), until the monitor's tick
        https_request(port, "one--shop.localhost", cafile=root, timeout=2)

    Monitor().sync_routes()
    assert Router(settings.DATA_DIR).synced()
    served(port, "one--shop.localhost", root)
    status, _, body = https_request(port, "two--shop.localhost", cafile=root)
    assert status == 503 and "two is stopped" in body
    assert https_request(port, "localhost", "/healthz", cafile=root)[0] in (200, 503)  # the dashboard's route is back too
    assert first.pk != second.pk


def test_deleting_shows_a_page_then_the_names_go(cast, runtime, router, settings) -> None:
    port, root = settings.DIPLOI_HTTPS_PORT, router.router.root_certificate
    d = deploy(cast, "Gone")
    served(port, "gone--shop.localhost", root)
    router.router.show_page(d.pk, "<p>being deleted</p>")
    assert https_request(port, "gone--shop.localhost", cafile=root)[0] == 503
    actions.do_delete(d, actor=cast.owner)
    tasks.destroy(d.pk)
    assert not Deployment.objects.filter(pk=d.pk).exists()
    assert not_served(port, "gone--shop.localhost", root)


def test_acme_certificates_for_a_public_base_domain_and_verified_custom_domains_only(
    cast, runtime, router, pebble, dns_server, settings, tmp_path
) -> None:
    settings.DIPLOI_BASE_DOMAIN = "apps.diploi-test.com"
    settings.DIPLOI_ACME_CA, settings.DIPLOI_ACME_CA_ROOT = pebble.directory, str(pebble.ca_root)
    router.kill()  # a router configured for this base domain
    router.start()
    Monitor().sync_routes()
    port = settings.DIPLOI_HTTPS_PORT
    d = deploy(cast, "Prod")
    assert d.endpoints == {"web": f"https://prod--shop.apps.diploi-test.com:{port}"}
    issued_by = pebble.issuing_root(tmp_path / "pebble-root.pem")
    served(port, "prod--shop.apps.diploi-test.com", issued_by)
    with pytest.raises(ssl.SSLCertVerificationError):  # not the router's own CA
        https_request(port, "prod--shop.apps.diploi-test.com", cafile=router.router.root_certificate)

    verified = actions.do_add_domain(d, "www.customer-shop.org", actor=cast.owner)
    unverified = actions.do_add_domain(d, "shop.someone-else.org", actor=cast.owner)
    dns_server[("www.customer-shop.org", "CNAME")] = ["prod--shop.apps.diploi-test.com."]
    assert actions.do_verify_domain(verified, actor=cast.owner).verified
    assert not actions.do_verify_domain(unverified, actor=cast.owner).verified
    tasks.route(d.pk)
    served(port, "www.customer-shop.org", issued_by)
    with pytest.raises(ssl.SSLError):  # never verified: no certificate asked for, nothing served
        https_request(port, "shop.someone-else.org", cafile=issued_by)

    actions.do_remove_domain(verified, actor=cast.owner)
    tasks.route(d.pk)
    assert not_served(port, "www.customer-shop.org", issued_by)


def test_production_releases_and_restarts_switch_without_a_failed_request(cast, runtime, router, settings, sample_repo) -> None:
    """A client asks continuously while a production deployment rolls to a new release, restarts, and is
    given a release whose health check fails: every answer is a 200 of a release that passed, and the
    failing one never answers (it never receives traffic; the old one keeps serving)."""
    from deployments.models import BuildStatus
    from projects.sample import commit_all

    settings.DIPLOI_RELEASE_DRAIN, settings.DIPLOI_READY_TIMEOUT = 1, 8
    port, root, host = settings.DIPLOI_HTTPS_PORT, router.router.root_certificate, "prod--shop.localhost"
    d = deploy(cast, "Prod", stage="production")
    served(port, host, root)
    with asking(port, host, root) as answers:
        app = sample_repo / "web" / "app.py"
        app.write_text(app.read_text().replace("<title>Diploi sample</title>", "<title>Second release</title>"))
        second = commit_all(sample_repo, "Second release")
        actions.do_deploy(d, actor=cast.owner)
        tasks.provision(d.pk)
        d.refresh_from_db()
        assert d.state == State.RUNNING and d.release.commit == second and not d.state_reason, d.state_reason
        wait_until(lambda: "Second release" in answers[-1][1], what="the second release to serve")

        tasks.restart(d.pk, "web")  # a restart of a component rolls the same way
        served(port, host, root, "Second release")

        broken = app.read_text().replace(
            'self.send_response(200)\n            self.send_header("Content-Length", "0")',
            'self.send_response(500)\n            self.send_header("Content-Length", "0")',
        )
        app.write_text(broken.replace("<title>Second release</title>", "<title>BROKEN release</title>"))
        commit_all(sample_repo, "A release that fails its health check")
        actions.do_deploy(d, actor=cast.owner)
        tasks.provision(d.pk)
        d.refresh_from_db()
        assert d.state == State.RUNNING and d.release.commit == second
        assert "the new release did not pass its health check" in d.state_reason and "previous release keeps serving" in d.state_reason
        refused = d.builds.order_by("-pk").first()
        assert refused.status == BuildStatus.FAILED and any(s["name"] == "release" and s["status"] == "failed" for s in refused.steps)
        Monitor().tick()
        d.refresh_from_db()
        assert d.status["colour"] == "yellow" and "did not pass its health check" in d.status["reason"]
        count = len(answers)
        wait_until(lambda: len(answers) > count + 20, what="more answers after the refused release")
    failed = [a for a in answers if a[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}"
    assert not any("BROKEN" in body for _, body in answers)
    assert len(answers) > 100
    print(f"{len(answers)} requests, none failed")


def test_host_names_are_one_label_each_and_never_shared(settings) -> None:
    from deployments.runtimes.base import DeploymentSpec, PortSpec, ServiceSpec
    from deployments.runtimes.hostnames import deployment_host, endpoints, is_private

    def spec(slug: str, project: str, component: str = "web", ports: tuple[str, ...] = ("http",)) -> DeploymentSpec:
        public = tuple(PortSpec(p, 8000 + i, public=True) for i, p in enumerate(ports))
        service = ServiceSpec(component, component, "component", "python", "", {}, ports=public)
        return DeploymentSpec(1, slug, project, "production", "", "main", "", True, services=(service,))

    settings.DIPLOI_BASE_DOMAIN = "apps.example.com"
    assert [(e.key, e.host) for e in endpoints(spec("prod", "shop", ports=("http", "admin")))] == [
        ("web", "prod--shop.apps.example.com"),
        ("web", "web--prod--shop.apps.example.com"),
        ("web/admin", "admin--web--prod--shop.apps.example.com"),
    ]
    # Parts that hold "--" themselves, or a name over 63 characters: hashed, with no "--" left to collide.
    tricky = [("a--b", "c"), ("a", "b--c"), ("x" * 40, "y" * 30)]
    names = [deployment_host(slug, project) for slug, project in tricky]
    labels = [n.removesuffix(".apps.example.com") for n in names]
    assert len(set(names)) == 3 and all(len(label) <= 63 and "--" not in label and label.startswith("h") for label in labels)
    assert deployment_host("a", "b--c") != deployment_host("a--b", "c")
    assert all(is_private(n) for n in ("localhost", "x.localhost", "svc.internal", "app.test", "10.0.0.1", "::1"))
    assert not any(is_private(n) for n in ("example.com", "apps.diploi-test.com", "localhost.example.org"))
