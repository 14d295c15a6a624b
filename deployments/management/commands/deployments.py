import json
from argparse import ArgumentParser

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.http import Http404

from accounts.models import User
from deployments import actions
from deployments.access import get_deployment_for_user
from deployments.models import Deployment
from deployments.provisioning.spec import current_spec
from deployments.runtimes import get_runtime
from deployments.runtimes.base import RuntimeFailure
from deployments.status import store
from deployments.status.observe import status_tree
from deployments.status.tree import Headline, headline
from projects.access import get_project_for_user, projects_for_user


class Command(BaseCommand):
    help = (
        "Script deployments: list, create, status, logs, restart, deploy, rebuild, releases, rollback, promote, resume, "
        "destroy (same access rules as the dashboard)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--user", required=True, help="act as this user (username)")
        sub = parser.add_subparsers(dest="action", required=True)
        ls = sub.add_parser("list")
        ls.add_argument("project", nargs="?")
        ls.add_argument("--json", action="store_true")
        create = sub.add_parser("create")
        create.add_argument("project")
        create.add_argument("name")
        create.add_argument("--stage", default="development", choices=["development", "staging", "production"])
        create.add_argument("--branch", help="defaults to the project's default branch")
        create.add_argument("--disabled", action="store_true")
        create.add_argument("--wait", action="store_true", help="provision now, in this process, and wait")
        for name in ("status", "logs", "restart", "deploy", "rebuild", "releases", "rollback", "promote", "resume", "destroy"):
            p = sub.add_parser(name)
            p.add_argument("target", help="<project>/<deployment>")
            if name in ("status", "releases"):
                p.add_argument("--json", action="store_true")
            if name == "deploy":
                p.add_argument("--commit", default="", help="this commit (40 hex digits) instead of the branch's tip")
            if name in ("rollback", "promote"):
                p.add_argument("release", type=int, help="the release's number (see `releases`)")
            if name == "promote":
                p.add_argument("to", help="the production deployment of the same project")
            if name in ("logs", "restart"):
                p.add_argument("service", help="component or add-on identifier")
            if name == "logs":
                p.add_argument("--follow", "-f", action="store_true")
                p.add_argument("--lines", "-n", type=int, default=100)
            if name in ("restart", "deploy", "rebuild", "rollback", "promote", "resume", "destroy"):
                p.add_argument("--wait", action="store_true", help="do it now, in this process")

    def handle(self, *args, user: str, action: str, **options) -> None:
        try:
            self.user = User.objects.get(username=user, is_active=True)
        except User.DoesNotExist:
            raise CommandError(f"no active user “{user}”") from None
        try:
            getattr(self, f"do_{action}")(**options)
        except Http404:
            raise CommandError("not found (or you are not a member of that project)") from None
        except PermissionDenied as e:
            raise CommandError(f"permission denied: {e}") from None
        except ValidationError as e:
            messages = [f"{k}: {' '.join(v)}" for k, v in e.message_dict.items()] if hasattr(e, "error_dict") else e.messages
            raise CommandError("; ".join(messages)) from None
        except RuntimeFailure as e:
            raise CommandError(str(e)) from None

    def _target(self, target: str, write: bool = False, owner: bool = False) -> Deployment:
        project, _, slug = target.partition("/")
        if not slug:
            raise CommandError("name the deployment as <project>/<deployment>")
        return get_deployment_for_user(self.user, project, slug, write=write, owner=owner)

    def do_list(self, project: str | None, json: bool = False, **_) -> None:
        projects = [get_project_for_user(self.user, project)] if project else list(projects_for_user(self.user))
        rows = [
            _summary(d) for d in Deployment.objects.filter(project__in=projects).select_related("project").order_by("project__slug", "slug")
        ]
        if json:
            self.stdout.write(_json(rows))
            return
        for r in rows:
            self.stdout.write(
                f"{r['project']}/{r['slug']:<24} {r['stage']:<12} {r['branch']:<20} {r['status']:<10} {r['endpoints'].get('web', '')}"
            )

    def do_create(self, project: str, name: str, stage: str, branch: str | None, disabled: bool, wait: bool, **_) -> None:
        p = get_project_for_user(self.user, project, write=True)
        d = actions.do_create_deployment(p, name, stage, branch or p.default_branch, actor=self.user, enabled=not disabled, now=wait)
        d.refresh_from_db()
        said = d.headline
        self.stdout.write(f"{p.slug}/{d.slug}: {said.word} — {said.reason}")

    def do_status(self, target: str, json: bool = False, **_) -> None:
        d = self._target(target)
        tree = status_tree(d)  # a look now, not the monitor's last one
        said = headline(tree, d.state, d.enabled, d.state_reason)
        status = _summary(d, said)
        status["items"] = [
            {"branch": branch, **store.item_to_json(i), "cpu": i.cpu_percent} for branch in tree.branches for i in getattr(tree, branch)
        ]
        status["history"] = [
            {"from": t.from_state, "to": t.to_state, "actor": t.actor, "reason": t.reason, "at": t.at.isoformat()}
            for t in d.transitions.all()
        ]
        if json:
            self.stdout.write(_json(status))
            return
        self.stdout.write(f"{d.project.slug}/{d.slug}  {d.stage}  {d.branch}@{d.commit[:10]}")
        self.stdout.write(f"{said.word} — {said.reason}")
        for url in d.endpoints.values():
            self.stdout.write(f"  {url}")
        for item in status["items"]:
            self.stdout.write(f"  {item['branch']:<10} {item['name']:<20} {item['colour']:<8} {item['message']}")

    def do_logs(self, target: str, service: str, follow: bool, lines: int, **_) -> None:
        d = self._target(target)
        try:
            for line in get_runtime().logs(current_spec(d), service, follow=follow, tail=lines):
                self.stdout.write(line)
        except KeyboardInterrupt:
            pass

    def do_restart(self, target: str, service: str, wait: bool, **_) -> None:
        actions.do_restart(self._target(target, write=True), service, actor=self.user, now=wait)
        self.stdout.write(f"{service} {'restarted' if wait else 'restart queued'}")

    def _done(self, d: Deployment, wait: bool, queued: str) -> None:
        d.refresh_from_db()
        self.stdout.write(f"{d.project.slug}/{d.slug}: {d.state + ' at ' + d.commit[:10] if wait else queued}")

    def do_deploy(self, target: str, commit: str, wait: bool, **_) -> None:
        d = self._target(target, write=True)
        build = actions.do_deploy(d, actor=self.user, commit=commit, now=wait)
        self._done(d, wait, f"release #{build.pk} queued" if build else "code update queued")

    def do_rebuild(self, target: str, wait: bool, **_) -> None:
        d = self._target(target, write=True)
        build = actions.do_rebuild(d, actor=self.user, now=wait)
        self._done(d, wait, f"build #{build.pk} queued")

    def do_rollback(self, target: str, release: int, wait: bool, **_) -> None:
        d = self._target(target, write=True)
        build = actions.do_rollback(d, release, actor=self.user, now=wait)
        self._done(d, wait, f"rollback #{build.pk} queued")
        self.stdout.write("pinned: new pushes are not deployed until `resume`")

    def do_promote(self, target: str, release: int, to: str, wait: bool, **_) -> None:
        d = self._target(target)
        production = self._target(f"{d.project.slug}/{to}", write=True)
        build = actions.do_promote(d, release, production, actor=self.user, now=wait)
        self._done(production, wait, f"promote #{build.pk} queued")

    def do_resume(self, target: str, wait: bool, **_) -> None:
        d = self._target(target, write=True)
        actions.do_resume(d, actor=self.user, now=wait)
        self._done(d, wait, "resumed; deploying the branch's tip")

    def do_releases(self, target: str, json: bool = False, **_) -> None:
        d = self._target(target)
        rows = [
            {
                "release": b.pk,
                "commit": b.commit,
                "status": b.status,
                "running": b.pk == d.release_id,
                "trigger": b.trigger,
                "via": b.via,
                "actor": b.actor,
                "message": b.message,
                "author": b.author,
                "source": b.source_id,
                "duration": b.duration,
                "pruned": b.pruned,
                "error": b.error,
                "attempts": b.attempts,
                "steps": {step["name"]: step["status"] for step in b.steps},
                "created": b.created.isoformat(),
                "log": b.log,
            }
            for b in d.builds.all()[:50]
        ]
        if json:
            self.stdout.write(_json(rows))
            return
        if d.pinned_at:
            self.stdout.write(f"pinned to {d.commit[:10]} — new pushes are not deployed; `resume` to follow {d.branch} again")
        for r in rows:
            mark = "*" if r["running"] else " "
            took = f"{r['duration']:.0f}s" if r["duration"] is not None else ""
            self.stdout.write(
                f"{mark}#{r['release']:<5} {r['commit'][:10]:<10} {r['status']:<10} {r['trigger']:<8} {took:>6}  {r['message'][:50]}"
            )

    def do_destroy(self, target: str, wait: bool, **_) -> None:
        d = self._target(target, owner=True)
        actions.do_delete(d, actor=self.user, now=wait)
        self.stdout.write(f"{d.project.slug}/{d.slug} {'destroyed' if wait else 'is being deleted'}")


def _summary(d: Deployment, said: Headline | None = None) -> dict:
    """A deployment as `list` and `status` show it: its status word, colour and reason as the dashboard
    shows them (`state` is the state machine's own value, for scripts); `said`: from a look just made,
    else from the monitor's stored tree."""
    fields = ("slug", "name", "stage", "branch", "commit", "enabled", "state")
    said = said or d.headline
    return {
        "project": d.project.slug,
        **{f: getattr(d, f) for f in fields},
        "status": said.word,
        "colour": said.colour.value,
        "reason": said.reason,
        "endpoints": d.endpoints,
    }


def _json(data: object) -> str:
    return json.dumps(data, indent=2, default=str)
