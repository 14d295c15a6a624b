"""Push webhooks of GitHub, GitLab, Gitea/Forgejo and Bitbucket, in their documented formats: which
host sent it, whether it is signed with the project's secret, and what it says was pushed. Plain
functions over headers and bytes; the view (views.py) answers, the actions act."""

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from projects.validators import without_credentials

MAX_BODY = 2 * 1024 * 1024  # bytes (under Django's own 2.5 MB limit); a push of thousands of commits stays below it
ZERO = "0" * 40
SHA = re.compile(r"[0-9a-f]{40}")


class Malformed(ValueError):
    """The body is not the host's push payload; the message names what is wrong."""


@dataclass(frozen=True)
class Host:
    name: str  # github | gitlab | gitea | bitbucket
    event: str
    delivery: str


@dataclass(frozen=True)
class Push:
    repositories: frozenset[str]  # canonical forms of every address the payload gives
    branch: str
    commit: str


def identify(headers) -> Host | None:
    """The sending host from its event header (Gitea and Forgejo also send GitHub's: checked first)."""
    if event := headers.get("X-Gitea-Event") or headers.get("X-Forgejo-Event"):
        return Host("gitea", event, headers.get("X-Gitea-Delivery") or headers.get("X-Forgejo-Delivery", ""))
    if event := headers.get("X-Gitlab-Event"):
        return Host("gitlab", event, headers.get("Idempotency-Key") or headers.get("X-Gitlab-Event-UUID", ""))
    if event := headers.get("X-Event-Key"):
        return Host("bitbucket", event, headers.get("X-Request-UUID") or headers.get("X-Request-Id", ""))
    if event := headers.get("X-GitHub-Event"):
        return Host("github", event, headers.get("X-GitHub-Delivery", ""))
    return None


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed(host: Host, headers, body: bytes, secret: str) -> bool:
    """Whether the delivery carries the project's secret the host's way (compared in constant time)."""
    if host.name == "gitlab":
        given, expected = headers.get("X-Gitlab-Token", ""), secret
    elif host.name == "gitea":
        given = headers.get("X-Gitea-Signature") or headers.get("X-Forgejo-Signature", "")
        expected = _hmac_hex(secret, body)
    else:
        given = headers.get("X-Hub-Signature-256" if host.name == "github" else "X-Hub-Signature", "")
        expected = "sha256=" + _hmac_hex(secret, body)
    return bool(given) and hmac.compare_digest(given.strip().encode(), expected.encode())


def is_push(host: Host) -> bool:
    return (
        host.event
        in {"github": ("push",), "gitea": ("push",), "gitlab": ("Push Hook",), "bitbucket": ("repo:push", "repo:refs_changed")}[host.name]
    )


def pushes(host: Host, body: bytes) -> list[Push]:
    """The branch updates a push event reports (deleted branches and tags left out); Malformed names
    the field that is missing or wrong."""
    try:
        data = json.loads(body)
    except ValueError as e:
        raise Malformed(f"the body is not JSON ({e})") from None
    except RecursionError:
        raise Malformed("the body nests too deeply to be a push event") from None
    if not isinstance(data, dict):
        raise Malformed("the body is not a JSON object")
    if host.name == "bitbucket":
        return _bitbucket(data)
    if host.name == "gitlab":
        project = _field(data, "project", dict)
        addresses = [project.get(k) for k in ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url")]
    else:
        repository = _field(data, "repository", dict)
        addresses = [repository.get(k) for k in ("clone_url", "ssh_url", "html_url", "git_url", "url")]
    ref, after = _field(data, "ref", str), _field(data, "after", str).lower()
    if not ref.startswith("refs/heads/") or after == ZERO or data.get("deleted") is True:
        return []
    if not SHA.fullmatch(after):
        raise Malformed("“after” is not a commit id")
    return [Push(_canonical_set(addresses), ref.removeprefix("refs/heads/"), after)]


def _bitbucket(data: dict) -> list[Push]:
    repository = _field(data, "repository", dict)
    links = repository.get("links") if isinstance(repository.get("links"), dict) else {}
    html = links.get("html", {}).get("href") if isinstance(links.get("html"), dict) else None
    addresses = [html, repository.get("full_name") and f"https://bitbucket.org/{repository['full_name']}"]
    found = []
    if "push" in data:  # Bitbucket Cloud
        changes = _field(_field(data, "push", dict), "changes", list)
        for change in changes:
            new = change.get("new") if isinstance(change, dict) else None
            if not isinstance(new, dict) or new.get("type") != "branch":
                continue  # a deleted branch, a tag
            target = new.get("target")
            commit = str(target.get("hash", "")).lower() if isinstance(target, dict) else ""
            if not SHA.fullmatch(commit):
                raise Malformed("push.changes[].new.target.hash is not a commit id")
            found.append(Push(_canonical_set(addresses), str(new.get("name", "")), commit))
        return found
    for change in _field(data, "changes", list):  # Bitbucket Data Center: repo:refs_changed
        if not isinstance(change, dict) or change.get("type") == "DELETE":
            continue
        ref = change.get("ref") if isinstance(change.get("ref"), dict) else {}
        commit = str(change.get("toHash", "")).lower()
        if ref.get("type") == "BRANCH" and SHA.fullmatch(commit):
            found.append(Push(_canonical_set(addresses), str(ref.get("displayId", "")), commit))
    return found


def _field(data: dict, name: str, kind: type):
    value = data.get(name)
    if not isinstance(value, kind):
        raise Malformed(f"“{name}” is missing or not {'an object' if kind is dict else 'a list' if kind is list else 'text'}")
    return value


def _canonical_set(addresses: list) -> frozenset[str]:
    return frozenset(canonical(a) for a in addresses if isinstance(a, str) and a)


def canonical(address: str) -> str:
    """One form for the many addresses of a repository: host/path, lower-cased, without scheme,
    credentials, port, trailing slash or ".git" (a local path: its absolute, resolved form)."""
    address = without_credentials(address.strip())
    if address.startswith("/") or address.startswith("file://"):
        path = os.path.realpath(address.removeprefix("file://"))
        return path.removesuffix("/").removesuffix(".git")
    if "://" not in address and ":" in address:  # scp-like: git@host:owner/repo.git
        userhost, _, path = address.partition(":")
        address = f"ssh://{userhost}/{path}"
    parts = urlsplit(address)
    host = (parts.hostname or "").lower()
    path = parts.path.strip("/").removesuffix(".git").lower()
    return f"{host}/{path}"
