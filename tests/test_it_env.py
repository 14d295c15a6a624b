"""Env values: assembled from the stack file, the add-ons and the user; encrypted at rest."""

import json

from django.db import connection

from deployments.actions import do_create_deployment
from deployments.models import Deployment, EnvVar
from deployments.provisioning import tasks
from deployments.provisioning.spec import build_spec, load_stack
from tests.conftest import http_get, provision_again, wait_until


def test_values_are_encrypted_at_rest(cast) -> None:
    d = Deployment.objects.create(project=cast.project, name="Dev", slug="dev", branch="main")
    EnvVar.objects.create(deployment=d, key="API_TOKEN", value="s3cret-value", secret=True)
    with connection.cursor() as c:
        c.execute("SELECT value FROM deployments_envvar")
        raw = c.fetchone()[0]
    assert "s3cret" not in raw and raw.startswith("gAAAA")  # a Fernet token
    assert EnvVar.objects.get().value == "s3cret-value"


def test_the_spec_assembles_env_from_every_source(cast) -> None:
    d = Deployment.objects.create(project=cast.project, name="Dev", slug="dev", branch="main")
    EnvVar.objects.create(deployment=d, key="GREETING", value="Hi from the user")  # overrides the stack's literal
    EnvVar.objects.create(deployment=d, service="web", key="ONLY_WEB", value="1")
    commit = cast.project.stack_commit
    spec = build_spec(d, load_stack(d, commit), commit)
    web, redis = spec.services
    assert web.env["GREETING"] == "Hi from the user" and web.env["ONLY_WEB"] == "1"
    assert web.exports["LOG_LEVEL"] == "info"  # a parameter's default (the runtime sets a service's parameters in its env)
    assert web.env["DIPLOI_COMMIT"] == commit and web.env["DIPLOI_STAGE"] == "development"
    assert [(i.name, i.source, i.source_name) for i in web.imports] == [("REDIS_URL", "redis", "REDIS_URL")]
    assert "ONLY_WEB" not in redis.env and "GREETING" not in redis.env
    # ${generate-random-password:N}: generated once per deployment, referred to by the others, kept, encrypted.
    password = redis.exports["REDIS_PASSWORD"]
    assert len(password) == 32 and password.isalnum() and len(web.exports["SECRET_KEY"]) == 50
    assert redis.exports["REDIS_URL"] == f"redis://:{password}@{{host}}:{{port}}/0"  # the runtime fills in its address
    again = build_spec(Deployment.objects.get(pk=d.pk), load_stack(d, commit), commit)
    assert again.services[1].exports["REDIS_PASSWORD"] == password
    with connection.cursor() as c:
        c.execute("SELECT credentials FROM deployments_deployment WHERE id = %s", [d.pk])
        assert password not in c.fetchone()[0]
    stored = json.loads(Deployment.objects.get(pk=d.pk).credentials)
    assert stored["redis/REDIS_PASSWORD"] == password and stored["web/SECRET_KEY"] == web.exports["SECRET_KEY"]


def test_a_user_value_reaches_the_running_component(cast, runtime) -> None:
    d = do_create_deployment(cast.project, "Dev", "development", "main", actor=cast.developer)
    EnvVar.objects.create(deployment=d, key="GREETING", value="Hello <from> env")
    tasks.provision(d.pk)
    d.refresh_from_db()
    page = wait_until(lambda: http_get(d.endpoints["web"]), what="the page")
    assert "<h1>Hello &lt;from&gt; env</h1>" in page
    run_file = runtime.home(build_spec(d, load_stack(d, d.commit), d.commit)) / "run" / "web.json"
    assert oct(run_file.stat().st_mode & 0o777) == "0o600"

    EnvVar.objects.filter(deployment=d, key="GREETING").update(value="Changed")
    provision_again(d.pk)
    wait_until(lambda: "<h1>Changed</h1>" in http_get(d.endpoints["web"]), what="the component to restart with the new value")
