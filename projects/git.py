"""Read-only access to project repositories through a local mirror per project.

Every call runs git without a terminal prompt, with a timeout, and with only the transports that
cannot run commands (ext:: and fd:: are refused by GIT_ALLOW_PROTOCOL).
"""

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

import gitsafe
from projects.stackerrors import TooLarge


class GitError(Exception):
    """The repository could not be read; the message is fit to show to users."""


class BranchNotFound(GitError):
    pass


def run_git(*args: str, cwd: Path | None = None, timeout: int | None = None) -> bytes:
    try:
        return gitsafe.output(args, cwd, timeout or settings.DIPLOI_GIT_TIMEOUT)
    except gitsafe.Failed as e:
        raise GitError(str(e)) from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def mirror_path(key: str) -> Path:
    return settings.DATA_DIR / "git" / f"{key}.git"


def sync_mirror(repository: str, mirror: Path) -> None:
    """Create or update a bare mirror of `repository` at `mirror`."""
    with _locked(mirror):
        if not (mirror / "HEAD").exists():
            tmp = mirror.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)  # left over from an interrupted clone
            try:
                run_git("clone", "--mirror", "--quiet", "--", repository, str(tmp))
            except GitError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise GitError(f"Could not read the repository: {e}") from None
            share(tmp)
            tmp.rename(mirror)
            return
        try:
            run_git("remote", "set-url", "origin", "--", repository, cwd=mirror)
            share(mirror)
            run_git("fetch", "--prune", "--quiet", "origin", cwd=mirror)
        except GitError as e:
            raise GitError(f"Could not read the repository: {e}") from None


def share(git_dir: Path) -> None:
    """Keep a repository of the platform's readable by every user, whatever the umask: a deployment's
    git (its own uid, in its sandbox) reads it there, read-only. Its folders above stay private to the
    platform; a sandbox has only its own project's repositories bound in."""
    if run_git("config", "--default", "", "core.sharedRepository", cwd=git_dir).strip() == b"0644":
        return
    run_git("config", "core.sharedRepository", "0644", cwd=git_dir)
    for root, _, files in os.walk(git_dir):
        os.chmod(root, os.stat(root).st_mode | 0o555)
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, os.stat(path).st_mode | 0o444)


def remote_branches(repository: str) -> list[str]:
    """The branches `repository` has now (GitError with the reason when it cannot be read)."""
    return sorted(ls_remote_heads(repository))


def resolve_branch(mirror: Path, branch: str) -> str:
    try:
        return run_git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", cwd=mirror).decode().strip()
    except GitError:
        raise BranchNotFound(f"Branch “{branch}” does not exist in the repository.") from None


def has_branch(mirror: Path, branch: str) -> bool:
    try:
        resolve_branch(mirror, branch)
        return True
    except GitError:
        return False


def list_branches(mirror: Path) -> list[str]:
    out = run_git("for-each-ref", "--format=%(refname:strip=2)", "refs/heads/", cwd=mirror)
    return sorted(out.decode().split())


def read_file(mirror: Path, commit: str, path: str, limit: int | None = None) -> bytes | None:
    """The file's content at `commit`, or None when there is no such file; TooLarge (before
    reading it) when it has more than `limit` bytes."""
    try:
        kind = run_git("cat-file", "-t", f"{commit}:{path}", cwd=mirror).decode().strip()
    except GitError:
        return None
    if kind != "blob":
        return None
    if limit is not None and (size := int(run_git("cat-file", "-s", f"{commit}:{path}", cwd=mirror))) > limit:
        raise TooLarge(size)
    return run_git("cat-file", "blob", f"{commit}:{path}", cwd=mirror)


def list_files(mirror: Path, commit: str, path: str) -> list[str]:
    """The names of the files directly in the folder `path` at `commit` ([] when there is no such folder)."""
    try:
        out = run_git("ls-tree", "-z", f"{commit}:{path}", cwd=mirror)
    except GitError:
        return []
    names = []
    for entry in out.split(b"\0"):
        meta, _, name = entry.partition(b"\t")
        if meta.split(b" ")[1:2] == [b"blob"]:
            names.append(name.decode(errors="replace"))
    return sorted(names)


def resolve_ref(mirror: Path, ref: str) -> str:
    """The commit a package's `#ref` names: a branch, a tag, or a commit id; the default branch when empty."""
    candidates = [f"refs/heads/{ref}", f"refs/tags/{ref}", ref] if ref else ["HEAD"]
    for name in candidates:
        try:
            return run_git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", cwd=mirror).decode().strip()
        except GitError:
            continue
    raise BranchNotFound(f"“{ref}” is neither a branch, a tag nor a commit of the package's repository.")


def has_commit(mirror: Path, commit: str) -> bool:
    try:
        run_git("cat-file", "-e", f"{commit}^{{commit}}", cwd=mirror)
        return True
    except GitError:
        return False


def is_folder(mirror: Path, commit: str, path: str) -> bool:
    if path == ".":
        return True
    try:
        return run_git("cat-file", "-t", f"{commit}:{path}", cwd=mirror).decode().strip() == "tree"
    except GitError:
        return False


def commit_info(mirror: Path, commit: str) -> tuple[str, str]:
    """The commit's author and the first line of its message ("" each when it cannot be read)."""
    try:
        out = run_git("log", "-1", "--format=%an%x00%s", commit, "--", cwd=mirror).decode(errors="replace")
    except GitError:
        return "", ""
    author, _, subject = out.strip().partition("\0")
    return author, subject


def ls_remote_heads(repository: str) -> dict[str, str]:
    """Every branch of `repository` and its tip, in one call (GitError with the reason)."""
    try:
        out = run_git("ls-remote", "--heads", "--", repository)
    except GitError as e:
        raise GitError(f"Could not read the repository: {e}") from None
    heads = {}
    for line in out.decode().splitlines():
        sha, _, ref = line.partition("\t")
        if ref.startswith("refs/heads/"):
            heads[ref.removeprefix("refs/heads/")] = sha
    return heads
