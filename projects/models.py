import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from projects.stackerrors import StackError
from projects.validators import validate_branch_name, validate_dns_label, validate_repository, without_credentials


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


WRITE_ROLES = (Role.OWNER, Role.DEVELOPER)


CI_TOKEN_PREFIX = "diploi_ci_"


def builds_externally() -> bool:
    """CI builds the staging/production images and reports them (POST /api/ci/builds/); Diploi does not build."""
    return settings.DIPLOI_RUNTIME == "kubernetes" and settings.DIPLOI_K8S_BUILD_MODE == "external"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Project(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=63, unique=True, validators=[validate_dns_label])
    repository = models.CharField(
        max_length=500, validators=[validate_repository], help_text="Git URL, or the absolute path of a local repository."
    )
    default_branch = models.CharField(max_length=255, default="main", validators=[validate_branch_name])
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    # What the last read of the stack file found on the default branch.
    stack_commit = models.CharField(max_length=40, blank=True)
    stack = models.JSONField(null=True, blank=True)
    stack_errors = models.JSONField(default=list, blank=True)
    stack_checked = models.DateTimeField(null=True, blank=True)
    # Packages named by Git URL: "url#ref" → the commit every read uses until a user asks for updates.
    package_locks = models.JSONField(default=dict, blank=True)

    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")
    # CI's token for reporting built images (external build mode): only its SHA-256 is kept.
    ci_token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    ci_token_created = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("deployments:project", args=[self.slug])

    @property
    def repository_shown(self) -> str:
        """The repository address without the credentials it may carry (https://user:token@…)."""
        return without_credentials(self.repository)

    def rotate_ci_token(self) -> str:
        """A new CI token (the old one stops working); returned once, only its hash is stored."""
        token = CI_TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.ci_token_hash, self.ci_token_created = _token_hash(token), timezone.now()
        self.save(update_fields=["ci_token_hash", "ci_token_created"])
        return token

    @classmethod
    def for_ci_token(cls, token: str) -> "Project | None":
        if not token.startswith(CI_TOKEN_PREFIX):
            return None
        return cls.objects.filter(ci_token_hash=_token_hash(token)).first()

    @property
    def stack_services(self) -> list[dict]:
        """The stored stack's components, then its add-ons."""
        return [*(self.stack or {}).get("components", []), *(self.stack or {}).get("addons", [])]

    @property
    def errors(self) -> list[StackError]:
        return [StackError(**e) for e in self.stack_errors]

    # Set by get_project_for_user: the role of the user who asked.
    role: str = ""

    @property
    def can_write(self) -> bool:
        return self.role in WRITE_ROLES

    @property
    def is_owner(self) -> bool:
        return self.role == Role.OWNER


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.DEVELOPER)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user")]
        ordering = ["created"]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.project}"


INVITATION_DAYS = 7


class Invitation(models.Model):
    """A place in a project offered to someone, who joins by accepting it.

    Addressed to a username or an e-mail address: the invitee sees it on their Projects page when the
    username is theirs or the address is one they have verified; the link shown once to the owner works
    for whoever holds it. Creating one says nothing about whether the address has an account.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="invitations")
    invitee = models.CharField(max_length=254, help_text="The username or e-mail address it is addressed to, lower-cased.")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.DEVELOPER)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField()

    class Meta:
        ordering = ["created"]
        constraints = [models.UniqueConstraint(fields=["project", "invitee"], name="one_invitation_per_invitee")]

    def __str__(self) -> str:
        return f"{self.invitee} invited to {self.project} as {self.role}"

    @classmethod
    def issue(cls, project: Project, invitee: str, role: str, by) -> tuple["Invitation", str]:
        """A new invitation (replacing an earlier one to the same invitee) and its token, returned once."""
        token = secrets.token_urlsafe(24)
        cls.objects.filter(project=project, invitee=invitee).delete()
        invitation = cls.objects.create(
            project=project,
            invitee=invitee,
            role=role,
            token_hash=_token_hash(token),
            invited_by=by,
            expires=timezone.now() + timezone.timedelta(days=INVITATION_DAYS),
        )
        return invitation, token

    @classmethod
    def pending(cls) -> models.QuerySet["Invitation"]:
        return cls.objects.filter(expires__gt=timezone.now())

    @classmethod
    def for_token(cls, token: str) -> "Invitation | None":
        return cls.pending().select_related("project", "invited_by").filter(token_hash=_token_hash(token)).first()
