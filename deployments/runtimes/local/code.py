"""A deployment's code on this machine: the development checkout and the releases built from commits."""

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gitsafe
from deployments.runtimes.base import BuildFailed, CodeState, DeploymentSpec, Progress, RuntimeFailure, ServiceSpec
from deployments.runtimes.local.observe import LOOKED_BACK, telling
from deployments.runtimes.local.sandbox import PUSH_PATH, Jail, copy_tree

GIT_TIMEOUT = 600
SHOWN_IN_THE_WAY = 20  # files named when edits keep the code from its branch's tip


class GitFailed(RuntimeFailure):
    pass


@dataclass(frozen=True)
class Git:
    """git on one deployment's files. Its checkout is the tenant's (its config, hooks, attributes, its
    fsmonitor): confined, git runs in the deployment's sandbox as its uid, seeing only the folder it
    works on and, read-only, the project's mirror (where every commit comes from). Unconfined, the
    deployment's code runs as the platform's user anyway, and so does git."""

    mirror: Path
    jail: Jail | None = None
    env: dict[str, str] = field(default_factory=dict)  # the sandbox's whole environment

    def __call__(self, *args: str, cwd: Path) -> bytes:
        """git `args` in `cwd`, the only folder it may write in."""
        confined = None
        if self.jail is not None:
            box = self.jail.tool(cwd, cwd, readable=(self.mirror, *self.jail.readable))
            confined = gitsafe.Confined(box.prefix(), self.env, self.jail.preexec())
        try:
            return gitsafe.output(args, cwd, GIT_TIMEOUT, confined)
        except gitsafe.Failed as e:
            raise GitFailed(str(e)) from None

    def new_folder(self, path: Path) -> None:
        """An empty folder for git to fill, the deployment's own (what a failed attempt left removed)."""
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o755)
        if self.jail is not None and self.jail.uid is not None:
            os.chown(path, self.jail.uid, self.jail.uid)


def checkout(spec: DeploymentSpec, code: Path, git: Git) -> None:
    """The development checkout: cloned once, then the developer's (it survives every apply)."""
    if (code / ".git").exists():
        switch_branch(code, spec.branch, git)
        return
    tmp = code.with_name("code.tmp")
    git.new_folder(tmp)
    try:
        git("clone", "--quiet", "--no-hardlinks", "--branch", spec.branch, "--", str(git.mirror), ".", cwd=tmp)
        if spec.commit:
            git("checkout", "--quiet", spec.commit, cwd=tmp)
            git("checkout", "--quiet", "-B", spec.branch, cwd=tmp)
        # the developer's pulls and pushes go to the project's repository, not to the platform's mirror
        git("remote", "set-url", "origin", "--", spec.repository, cwd=tmp)
        if git.jail is not None and git.jail.push_socket:  # a repository on this machine: pushes go through the platform
            git("config", "remote.origin.receivepack", f"python3 {PUSH_PATH}", cwd=tmp)
    except GitFailed as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeFailure(f"could not check out {spec.branch}: {e}") from None
    tmp.rename(code)


def _fetch(git: Git, code: Path, branch: str) -> None:
    """The branch's tip from the platform's mirror (synced just before) into origin's remote-tracking ref."""
    git("fetch", "--quiet", "--no-write-fetch-head", "--", str(git.mirror), f"+refs/heads/{branch}:refs/remotes/origin/{branch}", cwd=code)


def switch_branch(code: Path, branch: str, git: Git) -> None:
    """Follow a new branch; refuse rather than lose uncommitted edits."""
    current = git("rev-parse", "--abbrev-ref", "HEAD", cwd=code).decode().strip()
    if current == branch:
        return
    if git("status", "--porcelain", cwd=code).strip():
        raise RuntimeFailure(
            f"the code has uncommitted changes on {current}; commit or discard them (over SSH) before switching to {branch}"
        )
    try:
        _fetch(git, code, branch)
        git("checkout", "--quiet", "-B", branch, f"origin/{branch}", cwd=code)
    except GitFailed as e:
        raise RuntimeFailure(f"could not check out {branch}: {e}") from None


def fast_forward(code: Path, branch: str, pull: bool, git: Git) -> CodeState:
    """The checkout's state; with `pull`, fetch the branch and fast-forward to its tip when the
    developer has nothing in the way: no uncommitted change, no commit that is not on the branch.
    Otherwise nothing is touched and the state says how far behind it is and what is in the way."""
    head = git("rev-parse", "HEAD", cwd=code).decode().strip()
    if not pull:
        return CodeState(head)
    remote = f"refs/remotes/origin/{branch}"
    try:
        _fetch(git, code, branch)
    except GitFailed as e:
        raise RuntimeFailure(f"could not fetch {branch}: {e}") from None
    behind = int(git("rev-list", "--count", f"HEAD..{remote}", cwd=code))
    if behind == 0:
        return CodeState(head)
    ahead = int(git("rev-list", "--count", f"{remote}..HEAD", cwd=code))
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no", cwd=code).decode().splitlines()]
    in_the_way = dirty[:SHOWN_IN_THE_WAY] + ([f"… and {len(dirty) - SHOWN_IN_THE_WAY} more"] if len(dirty) > SHOWN_IN_THE_WAY else [])
    if ahead:
        in_the_way.append(f"{ahead} commit{'s' if ahead > 1 else ''} not pushed to {branch}")
    if in_the_way:
        return CodeState(head, behind, tuple(in_the_way))
    try:
        git("merge", "--quiet", "--ff-only", remote, cwd=code)
    except GitFailed as e:  # an untracked file the new commits bring too, for one
        return CodeState(head, behind, (str(e)[:300],))
    return CodeState(git("rev-parse", "HEAD", cwd=code).decode().strip())


@dataclass(frozen=True)
class Launch:
    """How to run one build command: shown as `command`, started as `argv` (in the sandbox when the
    deployment is confined) with `env`."""

    command: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    preexec: Callable[[], None] | None = None  # into the deployment's cgroups
    timeout: float | None = None


# The Launch of a step's command for a service, in the release being built (None: nothing to run).
Launcher = Callable[[str, ServiceSpec, Path], Launch | None]


def build_release(spec: DeploymentSpec, releases: Path, launcher: Launcher, progress: Progress, git: Git) -> str:
    """Check spec.commit out into a new release, run the components' install and build commands in
    it, and keep it under releases/<commit> (the platform prunes older ones: prune)."""
    releases.mkdir(parents=True, exist_ok=True)
    tmp = releases / f".{spec.commit}.tmp"
    try:
        progress("clone", 0, f"Checking out {spec.commit[:10]} of {spec.branch}")
        git.new_folder(tmp)
        try:  # --shared: the mirror's objects are read where they are, not copied (.git goes next)
            git("clone", "--quiet", "--shared", "--no-checkout", "--", str(git.mirror), ".", cwd=tmp)
            git("checkout", "--quiet", "--detach", spec.commit, cwd=tmp)
        except GitFailed as e:
            raise BuildFailed("clone", str(e)) from None
        shutil.rmtree(tmp / ".git")
        progress("clone", 25, "Checked out")

        for step, start, end in (("install", 25, 50), ("build", 50, 90)):
            components = [(s, launch) for s in spec.services if s.kind == "component" and (launch := launcher(step, s, tmp))]
            progress(step, start, None if components else f"Nothing to {step}")
            for i, (service, launch) in enumerate(components):
                percent = start + (end - start) * i // len(components)
                _run_step(step, service, launch, progress, percent)
            progress(step, end)

        progress("release", 90, "Storing the release")
        final = releases / spec.commit
        if final.exists():
            old = releases / f".{spec.commit}.old"
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(final)
        progress("release", 100, f"Release {spec.commit[:10]} ready")
        return spec.commit
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_step(step: str, service: ServiceSpec, launch: Launch, progress: Progress, percent: int) -> None:
    progress(step, percent, f"$ {launch.command}   ({service.identifier})")
    proc = subprocess.Popen(
        launch.argv,
        cwd=launch.cwd,
        env=launch.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=launch.preexec,
    )
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(launch.timeout, stop) if launch.timeout else None
    if timer:
        timer.start()
    said: deque[str] = deque(maxlen=LOOKED_BACK)  # what the failure message quotes
    try:
        assert proc.stdout
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            said.append(line)
            progress(step, percent, line)
        code = proc.wait()
    finally:
        if timer:
            timer.cancel()
    if timed_out.is_set():
        raise BuildFailed(
            step, f"`{launch.command}` in {service.identifier} did not finish within {launch.timeout:.0f} s (DIPLOI_BUILD_STEP_TIMEOUT)"
        )
    if code != 0:
        # what the command said (pip's or npm's error), not the command itself (the log has it)
        quoted = " / ".join(line[:200] for line in telling(list(said)))
        raise BuildFailed(step, f"{service.identifier}: exited with code {code}" + (f" — {quoted}" if quoted else ""))


def prune(releases: Path, keep: set[str]) -> None:
    """Remove the releases of the commits not in `keep`."""
    if not releases.is_dir():
        return
    for old in releases.iterdir():
        if not old.name.startswith(".") and old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


def import_release(source: Path, releases: Path, commit: str, uid: int | None) -> None:
    """A copy of another deployment's release `source` as releases/<commit> (kept if already there),
    owned by `uid` (copy_tree: its build steps wrote it, so links are not followed)."""
    final = releases / commit
    if final.is_dir():
        return
    if not source.is_dir():
        raise RuntimeFailure(f"the release of {commit[:10]} to promote is gone from its deployment")
    releases.mkdir(parents=True, exist_ok=True)
    tmp = releases / f".{commit}.import"
    shutil.rmtree(tmp, ignore_errors=True)
    copy_tree(source, tmp, uid)
    tmp.rename(final)
