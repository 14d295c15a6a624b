"""Parsing and checking of OpenSSH public keys pasted by users."""

import base64
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from django.utils.crypto import salted_hmac

MIN_RSA_BITS = 2048
MAX_KEY_LENGTH = 16 * 1024

ALLOWED_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",  # on a security key (FIDO): `ssh-keygen -t ed25519-sk`
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
SK_ED25519, SK_ECDSA = "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"
_CURVES = {
    SK_ECDSA: "secp256r1",
    "ecdsa-sha2-nistp256": "secp256r1",
    "ecdsa-sha2-nistp384": "secp384r1",
    "ecdsa-sha2-nistp521": "secp521r1",
}
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
        key, _ = _load(key_type, blob)
    except (ValueError, TypeError, BadSignature):
        raise InvalidKey("The key data is incomplete or corrupt; the key may be truncated.") from None
    except Exception:  # cryptography raises UnsupportedAlgorithm for odd inner types
        raise InvalidKey("The key type is not supported.") from None

    if key_type in (SK_ED25519, "ssh-ed25519") and not isinstance(key, ed25519.Ed25519PublicKey):
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


# Proof of possession: the person adding a key signs a challenge with it (`ssh-keygen -Y sign`), so nobody
# can register someone else's public key (public keys are public) and have that person's logins land in
# their deployments. The signature format is OpenSSH's PROTOCOL.sshsig.

SIGNATURE_NAMESPACE = "diploi-ssh-key"
_ARMOR = re.compile(r"-----BEGIN SSH SIGNATURE-----(.*?)-----END SSH SIGNATURE-----", re.DOTALL)
_SIG_HASHES = {"sha256": hashes.SHA256, "sha512": hashes.SHA512}
_ECDSA_HASHES = {"ecdsa-sha2-nistp256": hashes.SHA256, "ecdsa-sha2-nistp384": hashes.SHA384, "ecdsa-sha2-nistp521": hashes.SHA512}
_RSA_HASHES = {"rsa-sha2-256": hashes.SHA256, "rsa-sha2-512": hashes.SHA512}  # ssh-rsa (SHA-1) is not accepted


class BadSignature(ValueError):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def raw(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise BadSignature("The signature is truncated; paste every line of it.")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def uint32(self) -> int:
        return int.from_bytes(self.raw(4), "big")

    def string(self) -> bytes:
        return self.raw(self.uint32())

    def mpint(self) -> int:
        return int.from_bytes(self.string(), "big", signed=True)


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def _load(key_type: str, blob: bytes) -> tuple[object, bytes | None]:
    """The key and, for a security key, its application (PROTOCOL.u2f); cryptography reads the others."""
    if key_type not in (SK_ED25519, SK_ECDSA):
        return load_ssh_public_key(f"{key_type} {base64.b64encode(blob).decode()}".encode()), None
    r = _Reader(blob)
    if r.string() != key_type.encode():
        raise ValueError("the key data names another type")
    if key_type == SK_ED25519:
        key: object = ed25519.Ed25519PublicKey.from_public_bytes(r.string())
    else:
        if r.string() != b"nistp256":
            raise ValueError("not the nistp256 curve")
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), r.string())
    application = r.string()
    if r.at != len(blob):
        raise ValueError("trailing data")
    return key, application


def challenge_for(user_pk: int, fingerprint: str) -> str:
    """What the user signs: bound to this Diploi (its secret key), the user and the key."""
    return "diploi-key-proof-" + salted_hmac("accounts.sshkey-proof", f"{user_pk}:{fingerprint}").hexdigest()[:32]


def sign_command(key: PublicKey, challenge: str) -> str:
    """The command that prints the signature (with the key's usual file name; an agent-held key works too)."""
    name = {"ssh-ed25519": "id_ed25519", "ssh-rsa": "id_rsa"}.get(key.key_type, "id_ecdsa")
    return f"printf %s {challenge} | ssh-keygen -Y sign -n {SIGNATURE_NAMESPACE} -f ~/.ssh/{name}"


def verify_signature(key: PublicKey, armored: str, message: str) -> None:
    """Raise BadSignature (with a message fit to show) unless `armored` is `key`'s SSHSIG over `message`."""
    found = _ARMOR.search(armored or "")
    if not found:
        raise BadSignature("Paste the whole signature, from -----BEGIN SSH SIGNATURE----- to -----END SSH SIGNATURE-----.")
    try:
        blob = base64.b64decode("".join(found.group(1).split()), validate=True)
    except ValueError:
        raise BadSignature("The signature is not valid base64; paste it exactly as ssh-keygen printed it.") from None
    r = _Reader(blob)
    if r.raw(6) != b"SSHSIG" or r.uint32() != 1:
        raise BadSignature("This is not an SSH signature made by ssh-keygen -Y sign.")
    signer, namespace, _reserved, hash_name = r.string(), r.string(), r.string(), r.string().decode(errors="replace")
    signature = _Reader(r.string())
    if signer != key.blob:
        raise BadSignature("The signature was made with a different key than the one above.")
    if namespace != SIGNATURE_NAMESPACE.encode():
        raise BadSignature(f"The signature is for another purpose; sign with -n {SIGNATURE_NAMESPACE}.")
    if hash_name not in _SIG_HASHES:
        raise BadSignature(f"The signature uses the hash {hash_name!r}; sign with ssh-keygen's default (sha512).")
    algorithm, sig = signature.string().decode(errors="replace"), signature.string()
    public, application = _load(key.key_type, key.blob)
    if application is not None:  # a security key signs its own structure around the data (PROTOCOL.u2f)
        flags, counter = signature.raw(1), signature.raw(4)
        if not flags[0] & 0x01:
            raise BadSignature("The security key did not confirm a touch; sign again and touch it.")
    # The user may have signed with `echo` (a trailing newline) rather than `printf %s`: both prove possession.
    for text in (message, message + "\n"):
        h = hashes.Hash(_SIG_HASHES[hash_name]())
        h.update(text.encode())
        signed = b"SSHSIG" + _string(namespace) + _string(b"") + _string(hash_name.encode()) + _string(h.finalize())
        if application is not None:
            signed = hashlib.sha256(application).digest() + flags + counter + hashlib.sha256(signed).digest()
            algorithm = {SK_ED25519: "ssh-ed25519", SK_ECDSA: "ecdsa-sha2-nistp256"}.get(algorithm, "")
        if _verifies(public, algorithm, sig, signed):
            return
    raise BadSignature("The signature does not match; sign exactly the challenge shown, with this key.")


def _verifies(public: object, algorithm: str, sig: bytes, signed: bytes) -> bool:
    try:
        if isinstance(public, ed25519.Ed25519PublicKey) and algorithm == "ssh-ed25519":
            public.verify(sig, signed)
        elif isinstance(public, ec.EllipticCurvePublicKey) and algorithm in _ECDSA_HASHES:
            rs = _Reader(sig)
            public.verify(encode_dss_signature(rs.mpint(), rs.mpint()), signed, ec.ECDSA(_ECDSA_HASHES[algorithm]()))
        elif isinstance(public, rsa.RSAPublicKey) and algorithm in _RSA_HASHES:
            public.verify(sig, signed, padding.PKCS1v15(), _RSA_HASHES[algorithm]())
        else:
            return False
    except InvalidSignature:
        return False
    return True
