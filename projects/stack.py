"""Reading a project's stack file from its repository and storing what was found."""

from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ValidationError
from django.utils import timezone

from projects import git
from projects.models import Project
from projects.remote import GitPackages
from projects.stackerrors import StackError, TooLarge
from projects.stackfile import MAX_STACK_BYTES, STACK_FILE, Stack, parse_stack
from projects.validators import validate_branch_name


@dataclass
class GitTree:
    """The repository at one commit, as the stack file parser reads it."""

    mirror: Path
    commit: str

    def read(self, path: str, limit: int) -> bytes | None:
        return git.read_file(self.mirror, self.commit, path, limit)

    def is_folder(self, path: str) -> bool:
        return git.is_folder(self.mirror, self.commit, path)


def project_mirror(project: Project) -> Path:
    return git.mirror_path(f"project-{project.pk}")


def parse_stack_at(mirror: Path, commit: str, packages: GitPackages) -> tuple[Stack | None, list[StackError]]:
    tree = GitTree(mirror, commit)
    try:
        text = tree.read(STACK_FILE, MAX_STACK_BYTES)
    except TooLarge as e:
        return None, [StackError(STACK_FILE, "", f"{e}; it may be at most {MAX_STACK_BYTES // 1024} KiB")]
    return parse_stack(text, tree, packages)


def read_stack(repository: str, mirror: Path, branch: str, packages: GitPackages) -> tuple[str, Stack | None, list[StackError]]:
    """Fetch the branch and parse its stack file: (commit, stack, errors). Never raises GitError."""
    try:
        git.sync_mirror(repository, mirror)
        commit = git.resolve_branch(mirror, branch)
    except git.GitError as e:
        return "", None, [StackError("repository", "", str(e))]
    stack, errors = parse_stack_at(mirror, commit, packages)
    return commit, stack, errors


def refresh_stack(project: Project, update_packages: bool = False) -> dict[str, tuple[str, str]]:
    """Re-read the stack file of the project's default branch and store the outcome. Packages named
    by Git URL keep their locked commits unless `update_packages`; returns what changed as
    {url#ref: (old commit, new commit)}."""
    locks = dict(project.package_locks or {})
    packages = GitPackages(locks, refresh=update_packages)
    commit, stack, errors = read_stack(project.repository, project_mirror(project), project.default_branch, packages)
    resolved = packages.resolved if stack else {}  # an invalid stack records nothing
    changed = {key: (locks.get(key, ""), new) for key, new in resolved.items() if locks.get(key) != new}
    project.stack_commit = commit
    project.stack = stack.as_dict() if stack else None
    project.stack_errors = [e.as_dict() for e in errors]
    project.stack_checked = timezone.now()
    project.package_locks = {**locks, **resolved}
    project.save(update_fields=["stack_commit", "stack", "stack_errors", "stack_checked", "package_locks"])
    return changed


def branches(project: Project) -> list[str]:
    """The repository's branches as of the last fetch (empty when it could not be read)."""
    try:
        return git.list_branches(project_mirror(project))
    except git.GitError:
        return []


def check_branch(project: Project, branch: str) -> None:
    """ValidationError unless `branch` is a valid name of one of the repository's branches (fetched
    again when the last fetch did not have it: it may just have been pushed)."""
    validate_branch_name(branch)
    if branch in branches(project):
        return
    mirror = project_mirror(project)
    try:
        git.sync_mirror(project.repository, mirror)
        git.resolve_branch(mirror, branch)
    except git.GitError as e:
        raise ValidationError(str(e)) from None
