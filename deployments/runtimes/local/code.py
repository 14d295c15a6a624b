"""A deployment's code on this machine: the development checkout and the releases built from commits."""

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gitsafe
from deployments.runtimes.base import BuildFailed, DeploymentSpec, Progress, RuntimeFailure, ServiceSpec

KEEP_RELEASES = 3
GIT_TIMEOUT = 600


class GitFailed(RuntimeFailure):
    pass


def git(*args: str, cwd: Path | None = None) -> bytes:
    """git with no credentials of the platform's (gitsafe)."""
    try:
        return gitsafe.output(args, cwd, GIT_TIMEOUT)
    except gitsafe.Failed as e:
        raise GitFailed(str(e)) from None


def checkout(spec: DeploymentSpec, code: Path) -> bool:
    """The development checkout: cloned once, then the developer's (it survives every apply).
    True when the platform wrote files into it (a clone, another branch)."""
    if (code / ".git").exists():
        return switch_branch(code, spec.branch)
    tmp = code.with_name("code.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        git("clone", "--quiet", "--branch", spec.branch, "--", spec.repository, str(tmp))
        if spec.commit:
            git("checkout", "--quiet", spec.commit, cwd=tmp)
            git("checkout", "--quiet", "-B", spec.branch, cwd=tmp)
    except GitFailed as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeFailure(f"could not check out {spec.branch}: {e}") from None
    tmp.rename(code)
    return True


def switch_branch(code: Path, branch: str) -> bool:
    """Follow a new branch; refuse rather than lose uncommitted edits. True when it switched."""
    current = git("rev-parse", "--abbrev-ref", "HEAD", cwd=code).decode().strip()
    if current == branch:
        return False
    if git("status", "--porcelain", cwd=code).strip():
        raise RuntimeFailure(
            f"the code has uncommitted changes on {current}; commit or discard them (over SSH) before switching to {branch}"
        )
    try:
        git("fetch", "--quiet", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}", cwd=code)
        git("checkout", "--quiet", "-B", branch, f"origin/{branch}", cwd=code)
    except GitFailed as e:
        raise RuntimeFailure(f"could not check out {branch}: {e}") from None
    return True


@dataclass(frozen=True)
class Launch:
    """How to run one build command: shown as `command`, started as `argv` (in the sandbox when the
    deployment is confined) with `env`."""

    command: str
    argv: list[str]
    env: dict[str, str]
    preexec: Callable[[], None] | None = None  # into the deployment's cgroups
    timeout: float | None = None


# The Launch of a step's command for a service, in the release being built (None: nothing to run).
Launcher = Callable[[str, ServiceSpec, Path], Launch | None]


def build_release(spec: DeploymentSpec, releases: Path, launcher: Launcher, progress: Progress) -> str:
    """Check spec.commit out into a new release, run the components' install and build commands in
    it, and keep it under releases/<commit> (the previous ones too, up to KEEP_RELEASES)."""
    releases.mkdir(parents=True, exist_ok=True)
    tmp = releases / f".{spec.commit}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        progress("clone", 0, f"Checking out {spec.commit[:10]} of {spec.branch}")
        try:
            git("clone", "--quiet", "--no-checkout", "--", spec.repository, str(tmp))
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
                _run_step(step, service, launch, tmp / service.folder, progress, percent)
            progress(step, end)

        progress("release", 90, "Storing the release")
        final = releases / spec.commit
        if final.exists():
            old = releases / f".{spec.commit}.old"
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(final)
        _prune(releases, keep={spec.commit, spec.release})
        progress("release", 100, f"Release {spec.commit[:10]} ready")
        return spec.commit
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_step(step: str, service: ServiceSpec, launch: Launch, cwd: Path, progress: Progress, percent: int) -> None:
    progress(step, percent, f"$ {launch.command}   ({service.identifier})")
    proc = subprocess.Popen(
        launch.argv,
        cwd=cwd,
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
    try:
        assert proc.stdout
        for raw in proc.stdout:
            progress(step, percent, raw.decode(errors="replace").rstrip("\n"))
        code = proc.wait()
    finally:
        if timer:
            timer.cancel()
    if timed_out.is_set():
        raise BuildFailed(
            step, f"`{launch.command}` in {service.identifier} did not finish within {launch.timeout:.0f} s (DIPLOI_BUILD_STEP_TIMEOUT)"
        )
    if code != 0:
        raise BuildFailed(step, f"`{launch.command}` in {service.identifier} exited with code {code}")


def _prune(releases: Path, keep: set[str]) -> None:
    kept = sorted((p for p in releases.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for old in kept[:-KEEP_RELEASES]:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
