"""Packages named by Git URL (`https://host/owner/package#v1.2`): fetched with git into a mirror per URL,
their `#ref` resolved to a commit once and kept in the project's lock (`Project.package_locks`), so
every later read — a rebuild, a new deployment — uses the same commit until a user asks for updates."""

import hashlib
from pathlib import Path

from django.core.exceptions import ValidationError

from projects import git
from projects.package import PACKAGE_FILE
from projects.validators import validate_repository


def mirror_for(url: str) -> Path:
    return git.mirror_path("package-" + hashlib.sha256(url.encode()).hexdigest()[:24])


class GitPackages:
    """What the stack parser asks for packages by URL. `locks` maps "url#ref" to a commit; a ref not
    locked yet (or `refresh=True`) is resolved now and recorded in `resolved`."""

    def __init__(self, locks: dict[str, str] | None = None, refresh: bool = False) -> None:
        self.locks = dict(locks or {})
        self.refresh = refresh
        self.resolved: dict[str, str] = {}

    def fetch(self, url: str, ref: str, limit: int) -> tuple[str, bytes | None]:
        try:
            validate_repository(url)
        except ValidationError as e:
            raise git.GitError(f"the package's address is refused: {e.messages[0]}") from None
        key = f"{url}#{ref}"
        mirror = mirror_for(url)
        commit = None if self.refresh else self.locks.get(key)
        if commit is None or not git.has_commit(mirror, commit):
            git.sync_mirror(url, mirror)
            commit = commit if commit and git.has_commit(mirror, commit) else git.resolve_ref(mirror, ref)
        self.resolved[key] = commit
        return commit, git.read_file(mirror, commit, PACKAGE_FILE, limit)
