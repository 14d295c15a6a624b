"""Push to deploy, timed: from a `git commit` to the new release answering.

    uv run python bench/deploy.py [--repeat 3]

Runs in a temporary data directory with its own SQLite database and process supervisor (the
worker's part runs in this process: tasks.provision, as a worker would). Prints, with baselines
measured in the same run:
- production: push (a signed GitHub webhook delivery) → the new release answering, next to the
  same build started by hand (Deploy latest) — the ratio is what the trigger adds;
- development: push → the fast-forwarded code answering, next to Deploy latest by hand;
- rollback → the previous release answering, as a ratio to a build (no build runs).
"""

import argparse
import hashlib
import hmac
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
DATA = Path(tempfile.mkdtemp(prefix="diploi-bench-"))
os.environ.update(DIPLOI_DATA_DIR=str(DATA / "data"), DJANGO_SETTINGS_MODULE="diploi.settings")
os.environ.pop("DATABASE_URL", None)
os.environ.pop("REDIS_URL", None)

import django  # noqa: E402

django.setup()

from django.test import Client  # noqa: E402

from bench.sample import sample_project  # noqa: E402
from deployments import actions  # noqa: E402
from deployments.models import Deployment  # noqa: E402
from deployments.provisioning import tasks  # noqa: E402
from deployments.runtimes import get_runtime  # noqa: E402
from deployments.runtimes.local import disks  # noqa: E402
from projects.sample import commit_all  # noqa: E402


def answering(d: Deployment, commit: str, timeout: float = 120) -> None:
    url = Deployment.objects.get(pk=d.pk).endpoints["web"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if commit[:10] in urllib.request.urlopen(url, timeout=1).read().decode():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"{url} did not serve {commit[:10]} within {timeout} s")


def change(repo: Path, n: int) -> str:
    (repo / "CHANGES").write_text(f"change {n}\n")
    return commit_all(repo, f"change {n}")


def webhook_push(client: Client, hook, repository: str, commit: str) -> None:
    body = json.dumps({"ref": "refs/heads/main", "after": commit, "repository": {"clone_url": repository}}).encode()
    signature = "sha256=" + hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": commit, "X-Hub-Signature-256": signature}
    r = client.post(f"/hooks/{hook.token}/", data=body, content_type="application/json", headers=headers)
    assert r.status_code == 202, r.content


def timed(step) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    user, project = sample_project(DATA)
    repo = Path(project.repository)
    hook = actions.do_rotate_webhook_secret(project, actor=user)
    client = Client(HTTP_HOST="localhost")
    n = 0
    figures: dict[str, list[float]] = {}
    try:
        for stage in ("production", "development"):
            d = actions.do_create_deployment(project, stage, stage, "main", actor=user)
            tasks.provision(d.pk)
            d.refresh_from_db()
            for _ in range(args.repeat):
                n += 1
                commit = change(repo, n)

                def by_push(commit: str = commit, d: Deployment = d) -> None:
                    webhook_push(client, hook, project.repository, commit)
                    tasks.provision(d.pk)
                    answering(d, commit)

                figures.setdefault(f"{stage}: push → answering", []).append(timed(by_push))
                n += 1
                commit = change(repo, n)

                def by_hand(commit: str = commit, d: Deployment = d) -> None:
                    actions.do_deploy(Deployment.objects.get(pk=d.pk), actor=user)
                    tasks.provision(d.pk)
                    answering(d, commit)

                figures.setdefault(f"{stage}: Deploy latest → answering (baseline)", []).append(timed(by_hand))
            if stage == "production":
                for _ in range(args.repeat):
                    d = Deployment.objects.select_related("release").get(pk=d.pk)
                    previous = d.builds.filter(status="succeeded").exclude(pk=d.release_id).exclude(commit=d.release.commit).first()

                    def rollback(previous=previous, d: Deployment = d) -> None:
                        actions.do_rollback(d, previous.pk, actor=user)
                        tasks.provision(d.pk)
                        answering(d, previous.commit)

                    figures.setdefault("production: rollback → answering", []).append(timed(rollback))
                    actions.do_set_auto_deploy(d, True, actor=user)
    finally:
        get_runtime().supervisor.shutdown()
        disks.unmount_under(DATA)  # the deployments' own filesystems (as root)

    median = {name: statistics.median(values) for name, values in figures.items()}
    width = max(map(len, median))
    print(f"{'':{width}}  median s  (of {args.repeat})")
    for name, value in median.items():
        print(f"{name:{width}}  {value:8.2f}")
    for stage in ("production", "development"):
        ratio = median[f"{stage}: push → answering"] / median[f"{stage}: Deploy latest → answering (baseline)"]
        print(f"{stage}: push / Deploy latest = {ratio:.2f}")
    print(f"rollback / push-built release = {median['production: rollback → answering'] / median['production: push → answering']:.2f}")


if __name__ == "__main__":
    main()
