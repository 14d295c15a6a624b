"""The sample project shipped with Diploi, turned into a real Git repository."""

import shutil
from pathlib import Path

from projects.git import run_git, share

SAMPLE_DIR = Path(__file__).parent / "sample"
_IDENTITY = ("-c", "user.name=Diploi", "-c", "user.email=diploi@localhost", "-c", "commit.gpgsign=false")


def create_sample_repository(dest: Path, branch: str = "main") -> Path:
    """A Git repository at `dest` whose one commit on `branch` holds the sample project."""
    shutil.copytree(SAMPLE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    run_git("init", "--quiet", "--initial-branch", branch, cwd=dest)
    commit_all(dest, "Diploi sample project")
    share(dest / ".git")  # its development deployments pull from it
    dest.chmod(dest.stat().st_mode | 0o555)
    return dest


def commit_all(repo: Path, message: str) -> str:
    """Commit everything in the work tree of `repo`; returns the new commit's SHA."""
    run_git("add", "--all", cwd=repo)
    run_git(*_IDENTITY, "commit", "--quiet", "--allow-empty", "-m", message, cwd=repo)
    return run_git("rev-parse", "HEAD", cwd=repo).decode().strip()
