"""Parsing and checking of OpenSSH public keys pasted by users."""

import base64
import hashlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

MIN_RSA_BITS = 2048
MAX_KEY_LENGTH = 16 * 1024

ALLOWED_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
_CURVES = {"ecdsa-sha2-nistp256": "secp256r1", "ecdsa-sha2-nistp384": "secp384r1", "ecdsa-sha2-nistp521": "secp521r1"}
_PRIVATE_MARKERS = re.compile(r"PRIVATE KEY|PuTTY-User-Key-File", re.IGNORECASE)


class InvalidKey(ValueError):
    pass


class PrivateKeyPasted(InvalidKey):
    """A private key was pasted: it must not be echoed back, stored or logged."""


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    blob: bytes
    comment: str

    @property
    def openssh(self) -> str:
        """The key in the one-line form that `authorized_keys` and the SSH gateway use (no comment)."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"

    @property
    def fingerprint(self) -> str:
        """SHA256 fingerprint, exactly as `ssh-keygen -lf` prints it."""
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"


def parse_public_key(text: str) -> PublicKey:
    """Return the parsed key, or raise InvalidKey with a message fit to show the user.

    A pasted private key is recognised and rejected before anything else looks at it, so that it
    is never parsed, logged or stored.
    """
    text = (text or "").strip()
    if not text:
        raise InvalidKey("Paste a public key.")
    if _PRIVATE_MARKERS.search(text):
        raise PrivateKeyPasted(
            "This is a private key. It was not saved. Paste the public key instead "
            "(the contents of the .pub file, e.g. ~/.ssh/id_ed25519.pub)."
        )
    if len(text) > MAX_KEY_LENGTH:
        raise InvalidKey("This is too long to be an SSH public key.")
    if "\n" in text:
        raise InvalidKey("Paste a single key on one line.")

    parts = text.split(None, 2)
    key_type = parts[0]
    if key_type not in ALLOWED_TYPES:
        if key_type.startswith("ssh-dss"):
            raise InvalidKey("DSA keys are not accepted; use an ed25519, ECDSA or RSA (2048 bits or more) key.")
        raise InvalidKey(
            "This does not look like an SSH public key. It should start with ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa."
        )
    if len(parts) < 2:
        raise InvalidKey("The key data is missing after the key type.")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise InvalidKey("The key data is not valid base64; the key may be truncated or mangled.") from None

    try:
        key = load_ssh_public_key(f"{key_type} {parts[1]}".encode())
    except (ValueError, TypeError):
        raise InvalidKey("The key data is incomplete or corrupt; the key may be truncated.") from None
    except Exception:  # cryptography raises UnsupportedAlgorithm for odd inner types
        raise InvalidKey("The key type is not supported.") from None

    if key_type == "ssh-ed25519" and not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidKey("The key data does not match its type ssh-ed25519.")
    if key_type == "ssh-rsa":
        if not isinstance(key, rsa.RSAPublicKey):
            raise InvalidKey("The key data does not match its type ssh-rsa.")
        if key.key_size < MIN_RSA_BITS:
            raise InvalidKey(f"This RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required.")
    if key_type in _CURVES and (not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != _CURVES[key_type]):
        raise InvalidKey(f"The key data does not match its type {key_type}.")

    comment = parts[2].strip() if len(parts) > 2 else ""
    return PublicKey(key_type=key_type, blob=blob, comment=comment)
