"""The gateway's host key: generated on first start and kept, so clients can pin it. No asyncssh
here: the dashboard imports this to show the fingerprint."""

import functools
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.conf import settings

from accounts.sshkeys import parse_public_key

HOST_KEY = "ssh_host_ed25519_key"


def host_key_path() -> Path:
    return settings.DATA_DIR / HOST_KEY


def ensure_host_key() -> Path:
    """The private key's path, creating the key (OpenSSH format, mode 0600) when there is none."""
    path = host_key_path()
    if not path.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_bytes(private)
        tmp.chmod(0o600)
        path.with_suffix(".pub").write_bytes(public + b" diploi-gateway\n")
        tmp.rename(path)
    return path


def host_key_fingerprint() -> str | None:
    """SHA256 fingerprint of the gateway's host key, for the dashboard (None before its first start)."""
    pub = host_key_path().with_suffix(".pub")
    try:
        return _fingerprint(str(pub), pub.stat().st_mtime_ns)
    except FileNotFoundError:
        return None


@functools.lru_cache(maxsize=4)
def _fingerprint(path: str, mtime_ns: int) -> str:
    """Read once per key file version (every Overview shows it)."""
    return parse_public_key(Path(path).read_text()).fingerprint
