"""Validation of names that users type and that later reach Git, DNS or a process environment."""

import ipaddress
import re
import socket
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@(?P<host>[A-Za-z0-9.-]+):[^\s]+$")
_TRANSPORT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")  # git's <transport>::<address> (ext::, fd::)
_URL = re.compile(r"^(https?|ssh|git)://(?:[^@/\s]+@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\s]+)(?::\d+)?(?:/[^\s]*)?$")


def without_credentials(address: str) -> str:
    """A repository address without the credentials it may carry (https://user:token@… → https://…@…)."""
    return re.sub(r"^([a-z+]+://)[^@/]+@", r"\1…@", address)


def dns_label_error(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > 63:
        return "must be at most 63 characters"
    if not _DNS_LABEL.fullmatch(value):
        return "may contain only lowercase letters, digits and '-', and must start and end with a letter or digit"
    return None


def validate_dns_label(value: str) -> None:
    if error := dns_label_error(value):
        raise ValidationError(f"“{value}” {error}.")


def env_name_error(value: str) -> str | None:
    if not _ENV_NAME.fullmatch(value or ""):
        return "must be letters, digits and '_', not starting with a digit"
    return None


def has_control_character(text: str) -> bool:
    """A character below space, or DEL: nothing a name, path or address of ours may hold."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def own_env_name_error(value: str) -> str | None:
    """A variable a user or a project file sets: a valid name, and not one of Diploi's (DIPLOI_…),
    which the platform and each runtime set."""
    if err := env_name_error(value):
        return err
    if value.upper().startswith("DIPLOI_"):
        return "starts with DIPLOI_: those names are set by Diploi"
    return None


def validate_branch_name(value: str) -> None:
    """The rules of `git check-ref-format --branch`, checked without running git."""
    reason = None
    if not value:
        reason = "must not be empty"
    elif len(value) > 255:
        reason = "is too long"
    elif value.startswith("-"):
        reason = "must not start with '-'"
    elif value == "HEAD":
        reason = "is the name of the current commit, not of a branch"
    elif value == "@" or "@{" in value:
        reason = "must not be '@' or contain '@{'"
    elif _REF_FORBIDDEN.search(value):
        reason = "must not contain spaces, control characters or any of ~ ^ : ? * [ \\"
    elif ".." in value or "//" in value or value.startswith("/") or value.endswith("/") or value.endswith("."):
        reason = "must not contain '..' or '//', nor start or end with '/', nor end with '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in value.split("/")):
        reason = "must not have a part that starts with '.' or ends with '.lock'"
    if reason:
        raise ValidationError(f"“{value}” is not a valid branch name: it {reason}.")


def validate_repository(value: str) -> None:
    """A URL git can fetch over https/ssh/git/file, an scp-like address, or an absolute local path.

    Git's other transports (ext::, fd::) can run commands, and a leading '-' would be read as an
    option, so neither is accepted. A local path (or file://) must be under a folder the operator
    allows, and a server on this machine or a private network only when the operator allows it:
    otherwise a project could read the platform's own files or reach its internal services.
    """
    if value.startswith("-") or _TRANSPORT.match(value) or has_control_character(value):
        raise ValidationError("This repository address is not allowed.")
    if value.startswith(("/", "file://")):
        _check_local(value.removeprefix("file://"))
        return
    match = _URL.fullmatch(value) or _SCP_LIKE.fullmatch(value)
    if not match:
        raise ValidationError("Enter a Git URL (https://…, ssh://…, git@host:path) or the absolute path of a repository on this machine.")
    _check_host(match.group("host"))


def local_repository_roots() -> list[Path]:
    """Folders whose repositories projects may use: the operator's list and the demo's own."""
    return [Path(p).resolve() for p in settings.DIPLOI_LOCAL_REPOSITORIES] + [(settings.DATA_DIR / "repos").resolve()]


def _check_local(path: str) -> None:
    resolved = Path(path).resolve()
    if not any(resolved == root or root in resolved.parents for root in local_repository_roots()):
        raise ValidationError(
            "Repositories on this machine can be used only from the folders the operator allows "
            "(DIPLOI_LOCAL_REPOSITORIES); use a Git URL instead."
        )


def _check_host(host: str) -> None:
    if settings.DIPLOI_ALLOW_PRIVATE_REPOSITORIES:
        return
    host = host.strip("[]")
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in socket.getaddrinfo(host, None)}
        except (socket.gaierror, UnicodeError):
            return  # a name that does not resolve now: git says so when it fetches
    if host.lower() == "localhost" or any(not a.is_global for a in addresses):
        raise ValidationError(
            f"{host} is on this machine or a private network; repositories there are refused "
            f"unless the operator allows them (DIPLOI_ALLOW_PRIVATE_REPOSITORIES)."
        )


def safe_relative_folder(value: str) -> str | None:
    """Normalise a folder inside the repository ('/web', 'web/', '.'); None when it escapes the repository."""
    path = PurePosixPath("/" + value.strip())
    parts: list[str] = []
    for part in path.parts[1:]:
        if part == "..":
            return None
        if part not in (".", ""):
            parts.append(part)
    return "/".join(parts) or "."
