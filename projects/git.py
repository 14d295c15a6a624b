"""Read-only access to project repositories through a local mirror per project.

Every call runs git without a terminal prompt, with a timeout, and with only the transports that
cannot run commands (ext:: and fd:: are refused by GIT_ALLOW_PROTOCOL).
"""

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings


class GitError(Exception):
    """The repository could not be read; the message is fit to show to users."""


class BranchNotFound(GitError):
    pass


NO_CREDENTIALS_SSH = (
    "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o IdentitiesOnly=yes -o IdentityFile=none -o IdentityAgent=none"
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_ALLOW_PROTOCOL="file:git:http:https:ssh",
        # Never the platform user's own keys, agent, ssh config, git config or credential helpers:
        # a repository address comes from a user.
        GIT_SSH_COMMAND=NO_CREDENTIALS_SSH,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL="/dev/null",
        # checkouts of confined deployments belong to their own uids; the platform still reads them
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0="safe.directory",
        GIT_CONFIG_VALUE_0="*",
    )
    return env


def run_git(*args: str, cwd: Path | None = None, timeout: int | None = None) -> bytes:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=_env(),
            capture_output=True,
            timeout=timeout or settings.DIPLOI_GIT_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} timed out after {timeout or settings.DIPLOI_GIT_TIMEOUT} s") from None
    except OSError as e:  # git missing, or the folder it should run in (a mirror that was removed)
        raise GitError(f"git {args[0]} could not run: {e.strerror}") from None
    if result.returncode != 0:
        raise GitError(_sentence(result.stderr.decode(errors="replace")) or f"git {args[0]} failed with exit code {result.returncode}")
    return result.stdout


def _sentence(stderr: str) -> str:
    """git's reason in one sentence: its first `fatal:`/`error:` line (not the advice lines after it)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    reason = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
    reason = reason.split(":", 1)[1].strip() if reason.startswith(("fatal:", "error:")) else reason
    return reason if not reason or reason.endswith((".", "?", "!")) else reason + "."


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
            tmp.rename(mirror)
            return
        try:
            run_git("remote", "set-url", "origin", "--", repository, cwd=mirror)
            run_git("fetch", "--prune", "--quiet", "origin", cwd=mirror)
        except GitError as e:
            raise GitError(f"Could not read the repository: {e}") from None


def remote_branches(repository: str) -> list[str]:
    """The branches `repository` has now (GitError with the reason when it cannot be read)."""
    try:
        out = run_git("ls-remote", "--heads", "--", repository)
    except GitError as e:
        raise GitError(f"Could not read the repository: {e}") from None
    return sorted(line.split("refs/heads/", 1)[1] for line in out.decode().splitlines() if "refs/heads/" in line)


def resolve_branch(mirror: Path, branch: str) -> str:
    try:
        return run_git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", cwd=mirror).decode().strip()
    except GitError:
        raise BranchNotFound(f"Branch “{branch}” does not exist in the repository.") from None


def list_branches(mirror: Path) -> list[str]:
    out = run_git("for-each-ref", "--format=%(refname:strip=2)", "refs/heads/", cwd=mirror)
    return sorted(out.decode().split())


def read_file(mirror: Path, commit: str, path: str) -> bytes | None:
    """The file's content at `commit`, or None when there is no such file."""
    try:
        kind = run_git("cat-file", "-t", f"{commit}:{path}", cwd=mirror).decode().strip()
    except GitError:
        return None
    if kind != "blob":
        return None
    return run_git("cat-file", "blob", f"{commit}:{path}", cwd=mirror)


def is_folder(mirror: Path, commit: str, path: str) -> bool:
    if path == ".":
        return True
    try:
        return run_git("cat-file", "-t", f"{commit}:{path}", cwd=mirror).decode().strip() == "tree"
    except GitError:
        return False
