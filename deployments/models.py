import idna
from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from deployments.crypto import EncryptedTextField
from deployments.live.events import BUILD, STATE, publish, publish_project
from deployments.status import store, tree
from projects.models import Project
from projects.validators import validate_branch_name, validate_dns_label


class Stage(models.TextChoices):
    DEVELOPMENT = "development", "Development"
    STAGING = "staging", "Staging"
    PRODUCTION = "production", "Production"


class State(models.TextChoices):
    PENDING = "pending", "Pending"
    PROVISIONING = "provisioning", "Provisioning"
    BUILDING = "building", "Building"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"


class Deployment(models.Model):
    """One running instance of a project at one stage, following one branch."""

    # PROTECT: a project cannot be deleted while it still has deployments.
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="deployments")
    name = models.CharField(max_length=63)
    slug = models.SlugField(max_length=63, validators=[validate_dns_label])
    stage = models.CharField(max_length=20, choices=Stage.choices, default=Stage.DEVELOPMENT)
    branch = models.CharField(max_length=255, validators=[validate_branch_name])
    enabled = models.BooleanField(default=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    state_reason = models.CharField(max_length=500, blank=True)
    # When the state last moved (or was re-driven): how the reconciler tells a stuck deployment.
    state_since = models.DateTimeField(default=timezone.now, db_index=True)
    commit = models.CharField(max_length=40, blank=True, help_text="The commit the deployment runs (or checked out).")
    release = models.ForeignKey("Build", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.JSONField(default=dict, blank=True, help_text="The last status tree the runtime reported.")
    endpoints = models.JSONField(default=dict, blank=True, help_text="Public URL per component.")
    # Generated passwords of the add-ons, {identifier: password}, encrypted as one JSON document.
    credentials = EncryptedTextField(default="{}")
    # The packages' connectionStrings as they were last applied: [{service, name, description, value, masked}].
    connections = EncryptedTextField(default="[]")
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    clone_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="clones")
    # Set when a clone should start from a copy of its source's storage; cleared once copied.
    copy_storage_pending = models.BooleanField(default=False)
    # Changes that need provisioning, counted: each action adds one; a provisioning pass covers all
    # counted when it began. Requests that arrive during a pass coalesce into the next one.
    wanted = models.PositiveIntegerField(default=0)
    provisioned = models.PositiveIntegerField(default=0)
    # Who is changing the deployment's processes now (provisioning, building, deleting), until when
    # (renewed while it works; a worker that died lets it lapse): one at a time per deployment.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # Push to deploy: a new commit on the branch (webhook, polling) is deployed while this is on and
    # the deployment is not pinned (a rollback pins it until someone resumes).
    auto_deploy = models.BooleanField(default=True)
    pinned_at = models.DateTimeField(null=True, blank=True)
    pinned_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # The newest tip of the branch a trigger reported (what polling compares with).
    seen_commit = models.CharField(max_length=40, blank=True)
    # Development: a trigger asked for the code to be fast-forwarded, and what the last try found
    # when it could not ({"behind": N, "files": [...], "branch": name}; empty when up to date).
    pull_wanted = models.BooleanField(default=False)
    code_behind = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "slug"], name="deployment_slug_unique_per_project")]
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.slug}"

    def get_absolute_url(self) -> str:
        return reverse("deployments:detail", args=[self.project.slug, self.slug])

    @property
    def headline(self) -> tree.Headline:
        """Its word, colour and reason, as every surface shows them: from the state, else the monitor's
        last status tree (stored)."""
        return tree.headline(store.from_json(self.status), self.state, self.enabled, self.state_reason)

    @property
    def builds_releases(self) -> bool:
        return self.stage != Stage.DEVELOPMENT

    @property
    def follows_pushes(self) -> bool:
        return self.auto_deploy and self.pinned_at is None

    def transition(self, to: str, actor: str, reason: str = "") -> None:
        """Move to state `to` and record who/what did it and why (no record when nothing changes)."""
        with transaction.atomic():
            current = Deployment.objects.select_for_update().filter(pk=self.pk).values_list("state", "state_reason").first()
            if current is None:
                return
            if current == (to, reason[:500]):
                self.state, self.state_reason = current
                return
            Deployment.objects.filter(pk=self.pk).update(state=to, state_reason=reason[:500], state_since=timezone.now())
            StateTransition.objects.create(deployment_id=self.pk, from_state=current[0], to_state=to, actor=actor, reason=reason[:500])
            project_id = Deployment.objects.filter(pk=self.pk).values_list("project_id", flat=True).first()
            transaction.on_commit(lambda: (publish(self.pk, STATE), publish_project(project_id)))
        self.state, self.state_reason = to, reason[:500]


class StateTransition(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="transitions")
    from_state = models.CharField(max_length=20, choices=State.choices)
    to_state = models.CharField(max_length=20, choices=State.choices)
    actor = models.CharField(max_length=100, help_text="user:<name>, task:<name>, monitor or cli")
    reason = models.CharField(max_length=500, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.from_state} → {self.to_state} by {self.actor}"


class BuildStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SUPERSEDED = "superseded", "Superseded"


class Trigger(models.TextChoices):
    CREATE = "create", "Created"
    PUSH = "push", "Push"
    POLL = "poll", "Polling"
    MANUAL = "manual", "Deploy latest"
    REBUILD = "rebuild", "Rebuild"
    BRANCH = "branch", "Branch changed"
    ROLLBACK = "rollback", "Rollback"
    PROMOTE = "promote", "Promote"


BUILD_STEPS = ("clone", "install", "build", "release")


def _initial_steps() -> list[dict]:
    return [{"name": name, "status": BuildStatus.QUEUED, "started": None, "finished": None} for name in BUILD_STEPS]


GIT_HOSTS = {"github": "GitHub", "gitlab": "GitLab", "gitea": "Gitea/Forgejo", "bitbucket": "Bitbucket"}


class Build(models.Model):
    """One release of a deployment (staging and production): a commit turned into an immutable
    artifact by a build, or an earlier artifact run again (`source`: a rollback, a promote). The rows
    of a deployment are its release history; queued ones are its build queue."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="builds")
    # Empty while queued for "the branch's tip when the build starts" (Deploy latest).
    commit = models.CharField(max_length=40, blank=True)
    trigger = models.CharField(max_length=20, choices=Trigger.choices, default=Trigger.CREATE)
    via = models.CharField(max_length=20, blank=True, help_text="The Git host whose webhook reported the push.")
    actor = models.CharField(max_length=100, blank=True, help_text="user:<name>, webhook, poll, …")
    message = models.CharField(max_length=300, blank=True)
    author = models.CharField(max_length=200, blank=True)
    source = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    attempts = models.PositiveSmallIntegerField(default=0)
    pruned = models.BooleanField(default=False, help_text="Its artifact is gone (beyond DIPLOI_RELEASES_KEPT).")
    status = models.CharField(max_length=20, choices=BuildStatus.choices, default=BuildStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    steps = models.JSONField(default=_initial_steps)
    log = models.TextField(blank=True)
    error = models.CharField(max_length=500, blank=True)
    external_url = models.URLField(blank=True, help_text="The CI run that built this release, when built elsewhere.")
    images = models.JSONField(default=dict, blank=True, help_text="Component → image reference, when CI built them.")
    package_locks = models.JSONField(default=dict, blank=True, help_text="The packages by Git URL it was built with: url#ref → commit.")
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-pk"]

    def __str__(self) -> str:
        return f"build {self.pk} of {self.commit[:10] or 'the tip'} ({self.status})"

    @property
    def duration(self) -> float | None:
        if self.started and self.finished:
            return (self.finished - self.started).total_seconds()
        return None

    @property
    def via_display(self) -> str:
        return GIT_HOSTS.get(self.via, self.via)

    @property
    def reused(self) -> bool:
        """Released without a build: an earlier artifact run again."""
        return self.source_id is not None

    def append_log(self, text: str) -> None:
        """Keep the log bounded: when it grows past the limit, the oldest part goes."""
        limit = settings.DIPLOI_BUILD_LOG_LIMIT
        log = self.log + text
        if len(log) > limit:
            log = "[… earlier output trimmed …]\n" + log[-(limit - 40) :]
        self.log = log

    # The state machine: queued → running → succeeded | failed. A build started again (a retried
    # task) begins from queued steps; `advance` and the log stay in memory until `save_progress`.

    def start(self) -> None:
        """Running from its first step; a build its worker left running starts again, its log kept."""
        self.attempts += 1
        if self.attempts > 1:
            self.append_log(f"\n--- The worker running this build stopped; building again (attempt {self.attempts}) ---\n")
        self.status, self.progress, self.error = BuildStatus.RUNNING, 0, ""
        self.started, self.finished = timezone.now(), None
        self.steps = _initial_steps()
        self.save()

    def reuse(self, note: str) -> None:
        """Released without a build: `source`'s artifact runs (a rollback, a promote)."""
        now = timezone.now()
        self.steps = [{"name": "release", "status": BuildStatus.SUCCEEDED, "started": now.isoformat(), "finished": now.isoformat()}]
        self.append_log(note + "\n")
        self.started = now
        self.succeed()

    def advance(self, step: str, percent: int, line: str | None = None) -> None:
        """`step` is running at `percent`: the running steps before it have succeeded."""
        now = timezone.now().isoformat()
        for s in self.steps:
            if s["name"] == step:
                if s["status"] == BuildStatus.QUEUED:
                    s["status"], s["started"] = BuildStatus.RUNNING, now
                break
            if s["status"] == BuildStatus.RUNNING:
                s["status"], s["finished"] = BuildStatus.SUCCEEDED, now
        self.progress = max(self.progress, min(percent, 100))
        if line is not None:
            self.append_log(line + "\n")

    def save_progress(self) -> None:
        self.save(update_fields=["steps", "progress", "log", "external_url"])
        publish(self.deployment_id, BUILD)

    def fail(self, step: str, error: str) -> None:
        now = timezone.now()
        for s in self.steps:
            if s["name"] == step:
                s["status"], s["started"], s["finished"] = BuildStatus.FAILED, s["started"] or now.isoformat(), now.isoformat()
        self.append_log(f"\n{error}\n")
        self.status, self.error, self.finished = BuildStatus.FAILED, error[:500], now
        self.save()
        publish(self.deployment_id, BUILD)

    def succeed(self, images: dict[str, str] | None = None) -> None:
        """Every unfinished step has succeeded: the artifact is ready (provisioning runs it)."""
        now = timezone.now()
        for s in self.steps:
            if s["status"] in (BuildStatus.RUNNING, BuildStatus.QUEUED):
                s["status"], s["started"], s["finished"] = BuildStatus.SUCCEEDED, s["started"] or now.isoformat(), now.isoformat()
        self.status, self.progress, self.finished = BuildStatus.SUCCEEDED, 100, now
        if images is not None:
            self.images = images
        self.save()
        publish(self.deployment_id, BUILD)


class CIReport(models.Model):
    """What CI reported for one component at one commit (external build mode). Kept per project, so
    a report that arrives before Diploi has started waiting for it is not lost."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="ci_reports")
    commit = models.CharField(max_length=40)
    component = models.CharField(max_length=63)
    status = models.CharField(max_length=20, choices=BuildStatus.choices)
    image = models.CharField(max_length=500, blank=True)
    url = models.URLField(max_length=500, blank=True)
    message = models.CharField(max_length=500, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "commit", "component"], name="one_report_per_component")]

    def __str__(self) -> str:
        return f"{self.component}@{self.commit[:10]}: {self.status}"


class EnvVar(models.Model):
    """A user-set variable. `service` is empty for every component, or one component's identifier."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="env_vars")
    service = models.CharField(max_length=63, blank=True)
    key = models.CharField(max_length=255)
    value = EncryptedTextField(blank=True)
    secret = models.BooleanField(default=False)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "service", "key"], name="env_key_unique")]
        ordering = ["service", "key"]

    def __str__(self) -> str:
        return f"{self.service or '*'}:{self.key}"


class Sample(models.Model):
    """CPU and memory of a deployment (its containers together) at one moment: the latest is its figure (kept an hour)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    cpu_percent = models.FloatField()
    memory_bytes = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["deployment", "-at"], name="sample_latest")]
        ordering = ["at"]


class Usage(models.Model):
    """CPU and memory of one container of a deployment, for the Overview's resource graphs: a raw point
    every SAMPLE_EVERY (`step` 10), and averages per minute (60) and per 10 minutes (600), each kept for
    its own time (deployments/status/usage.py: TIERS)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="usage")
    container = models.CharField(max_length=64)
    step = models.PositiveSmallIntegerField()  # seconds a point stands for
    at = models.DateTimeField()  # a raw point's moment; an average's bucket start
    cpu_percent = models.FloatField()
    memory_bytes = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "step", "at", "container"], name="usage_point")]
        indexes = [models.Index(fields=["step", "at"], name="usage_expiry")]


class Domain(models.Model):
    """A custom host name of a deployment; the user points it at Diploi with a CNAME record."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="domains")
    # IDNA (punycode) form, lowercase; unique across the platform.
    name = models.CharField(max_length=253, unique=True)
    verified = models.BooleanField(default=False)
    checked = models.DateTimeField(null=True, blank=True)
    check_result = models.CharField(max_length=300, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def display_name(self) -> str:
        try:
            return idna.decode(self.name)
        except (idna.IDNAError, UnicodeError):
            return self.name


class SSHSession(models.Model):
    """One connection through the SSH gateway into a deployment: who, where from, what, how it ended."""

    class Kind(models.TextChoices):
        SHELL = "shell", "Shell"
        EXEC = "exec", "Command"
        SFTP = "sftp", "SFTP"
        FORWARD = "forward", "Port forward"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="ssh_sessions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="ssh_sessions")
    key_fingerprint = models.CharField(max_length=60)
    component = models.CharField(max_length=63)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    command = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=60, help_text="Client address and port.")
    started = models.DateTimeField(default=timezone.now)
    ended = models.DateTimeField(null=True, blank=True)
    exit_status = models.IntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-started", "-pk"]
        indexes = [models.Index(fields=["deployment", "-started"], name="ssh_session_latest")]


class Webhook(models.Model):
    """A project's push webhook: one URL (by `token`) for GitHub, GitLab, Gitea/Forgejo and Bitbucket,
    checked with `secret` (kept encrypted: HMAC needs it in the clear)."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="webhook")
    token = models.CharField(max_length=64, unique=True)
    secret = EncryptedTextField()
    created = models.DateTimeField(auto_now_add=True)
    last_delivery = models.DateTimeField(null=True, blank=True)
    last_outcome = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return f"webhook of {self.project}"


class RegistryCredential(models.Model):
    """A project's login to an image registry (`host`: `ghcr.io`, `registry.example.com:5000`): podman
    pulls with it on this machine (a Dockerfile's base image, a package's prebuilt image), and on
    Kubernetes it is the deployments' pull secret. The password or token is kept encrypted and never
    shown again."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="registries")
    host = models.CharField(max_length=253)
    username = models.CharField(max_length=200)
    password = EncryptedTextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "host"], name="one_login_per_registry")]
        ordering = ["host"]

    def __str__(self) -> str:
        return f"{self.username}@{self.host} for {self.project}"


class Delivery(models.Model):
    """A webhook delivery already handled: the same id again is answered without acting twice."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    delivery_id = models.CharField(max_length=100)
    host = models.CharField(max_length=20)
    received = models.DateTimeField(auto_now_add=True, db_index=True)
    outcome = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["webhook", "host", "delivery_id"], name="one_delivery_per_id")]


class Poll(models.Model):
    """Polling of one repository (however many projects and deployments follow it)."""

    repository = models.CharField(max_length=500, unique=True)
    next_at = models.DateTimeField(default=timezone.now, db_index=True)
    failures = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    checked = models.DateTimeField(null=True, blank=True)


class Intent(models.Model):
    """Work a change asked for, stored in the change's own transaction (an outbox): removed once the
    task queue has taken it, else sent by the monitor's reconciler when the queue answers again."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    task = models.CharField(max_length=100)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["pk"]
