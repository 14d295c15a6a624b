"""Packages named by Git URL (`https://host/owner/package#v1.2`): fetched with git into a mirror per URL,
their `#ref` resolved to a commit once and kept in the project's lock (`Project.package_locks`), so
every later read — a rebuild, a new deployment — uses the same commit until a user asks for updates."""

import hashlib
from pathlib import Path

from django.core.exceptions import ValidationError

from projects import git
from projects.package import CHART_FOLDER, MAX_CHART_BYTES, MAX_CHART_FILES, PACKAGE_FILE
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

    def chart(self, url: str, commit: str, limit: int) -> tuple[tuple[str, str], ...]:
        """The package's Helm templates (`.diploi/helm/*.yaml`) at `commit`: (name, text) pairs, at most
        MAX_CHART_FILES of at most `limit` bytes each (TooLarge above)."""
        mirror = mirror_for(url)
        names = [n for n in git.list_files(mirror, commit, CHART_FOLDER) if n.endswith((".yaml", ".yml", ".tpl"))]
        if len(names) > MAX_CHART_FILES:
            raise git.GitError(f"its {CHART_FOLDER} has {len(names)} files; a chart may have at most {MAX_CHART_FILES}")
        files = tuple((name, git.read_file(mirror, commit, f"{CHART_FOLDER}/{name}", limit) or b"") for name in names)
        if (total := sum(len(text) for _, text in files)) > MAX_CHART_BYTES:
            raise git.GitError(f"its {CHART_FOLDER} holds {total} bytes; a chart may hold at most {MAX_CHART_BYTES // 1024} KiB")
        return tuple((name, text.decode(errors="replace")) for name, text in files)
