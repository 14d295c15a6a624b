"""git as the platform runs it on a user's repository: no prompt; none of the platform user's own keys,
agent, ssh or git configuration, nor credential helpers (a repository address comes from a user); only
transports that cannot run commands (ext:: and fd:: are refused); a failure told in one sentence.

Shared by `projects` (mirrors) and the local runtime (checkouts and releases), which may not import
each other."""

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NO_CREDENTIALS_SSH = (
    "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o IdentitiesOnly=yes -o IdentityFile=none -o IdentityAgent=none"
)


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (the platform's own environment when None) with git's settings of this module."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("GIT_")}
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_ALLOW_PROTOCOL="file:git:http:https:ssh",
        GIT_SSH_COMMAND=NO_CREDENTIALS_SSH,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL="/dev/null",
        # checkouts of confined deployments belong to their own uids; the platform still reads them
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0="safe.directory",
        GIT_CONFIG_VALUE_0="*",
    )
    return env


@dataclass(frozen=True)
class Confined:
    """Where git runs when it works on a tenant's files: the sandbox's command prefix (up to "--"),
    the whole environment it gets, and what the process that starts it does first (cgroups)."""

    prefix: list[str]
    env: dict[str, str]
    preexec: Callable[[], None] | None = None


class Failed(Exception):
    """git did not do it; the message is one sentence, fit to show."""


def output(args: tuple[str, ...], cwd: Path | None, timeout: float, confined: "Confined | None" = None) -> bytes:
    """What git with `args` prints; Failed when it times out, cannot run (git or `cwd` missing) or fails.
    `confined`: run inside a sandbox (its command prefix) with only the given environment, and git
    trusting only the repositories the sandbox's own configuration names."""
    argv, env, preexec = ["git", *args], environment(), None
    if confined is not None:
        argv = [*confined.prefix, *argv]
        env = {k: v for k, v in environment(confined.env).items() if not k.startswith("GIT_CONFIG_")}
        env.update(GIT_CONFIG_GLOBAL="/dev/null")
        preexec = confined.preexec
    try:
        result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=preexec)
    except subprocess.TimeoutExpired:
        raise Failed(f"git {args[0]} timed out after {timeout:g} s") from None
    except OSError as e:
        raise Failed(f"git {args[0]} could not run: {e.strerror}") from None
    if result.returncode != 0:
        raise Failed(_reason(result))
    return result.stdout


def _reason(result: subprocess.CompletedProcess) -> str:
    """Why git failed, in one sentence: its first `fatal:`/`error:` line (not the advice after it)."""
    lines = [ln.strip() for ln in result.stderr.decode(errors="replace").splitlines() if ln.strip()]
    found = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
    found = found.split(":", 1)[1].strip() if found.startswith(("fatal:", "error:")) else found
    if not found:
        return f"git {result.args[1]} failed with exit code {result.returncode}"
    return found if found.endswith((".", "?", "!")) else found + "."
