import base64
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from accounts.models import SSHKey
from accounts.sshkeys import SIGNATURE_NAMESPACE, InvalidKey, challenge_for, parse_public_key

OpenSSH = serialization.Encoding.OpenSSH


def public_line(private_key, comment: str = "me@laptop") -> str:
    line = private_key.public_key().public_bytes(OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}" if comment else line


def private_pem(private_key) -> str:
    return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()


ED25519 = ed25519.Ed25519PrivateKey.generate()
RSA_2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)


@pytest.mark.parametrize(
    "key, key_type",
    [
        (ED25519, "ssh-ed25519"),
        (ec.generate_private_key(ec.SECP256R1()), "ecdsa-sha2-nistp256"),
        (ec.generate_private_key(ec.SECP384R1()), "ecdsa-sha2-nistp384"),
        (ec.generate_private_key(ec.SECP521R1()), "ecdsa-sha2-nistp521"),
        (RSA_2048, "ssh-rsa"),
        (rsa.generate_private_key(public_exponent=65537, key_size=4096), "ssh-rsa"),
    ],
)
def test_it_accepts_good_keys(key, key_type: str) -> None:
    parsed = parse_public_key(public_line(key))
    assert parsed.key_type == key_type
    assert parsed.comment == "me@laptop"
    assert parsed.openssh == public_line(key, comment="")


def _truncate(line: str) -> str:
    kind, data = line.split()[:2]
    return f"{kind} {data[: len(data) // 2]}"


def _swap_type(line: str) -> str:
    return "ssh-rsa " + line.split()[1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "Paste a public key"),
        ("   \n ", "Paste a public key"),
        ("hello world", "does not look like an SSH public key"),
        (private_pem(ED25519), "This is a private key"),
        (private_pem(RSA_2048), "This is a private key"),
        (
            RSA_2048.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            ).decode(),
            "This is a private key",
        ),
        ("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none", "This is a private key"),
        ("ssh-ed25519", "key data is missing"),
        ("ssh-ed25519 !!!notbase64!!!", "not valid base64"),
        (_truncate(public_line(ED25519)), "truncated"),
        (_truncate(public_line(RSA_2048)), "truncated"),
        (public_line(RSA_1024), "has 1024 bits; at least 2048"),
        (_swap_type(public_line(ED25519)), "incomplete or corrupt"),
        ("ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x07ssh-rsa").decode(), "incomplete or corrupt"),
        ("ssh-dss " + base64.b64encode(b"\x00\x00\x00\x07ssh-dss").decode(), "DSA keys are not accepted"),
        (public_line(ED25519) + "\n" + public_line(RSA_2048), "single key"),
        ('command="ls" ' + public_line(ED25519), "does not look like an SSH public key"),
        ("ssh-ed25519 " + "A" * 20000, "too long"),
    ],
    ids=lambda value: None if len(str(value)) < 40 else "long",  # (keys are made afresh by every process)
)
def test_it_rejects_bad_keys(text: str, message: str) -> None:
    with pytest.raises(InvalidKey) as e:
        parse_public_key(text)
    assert message in str(e.value)


@pytest.mark.parametrize("key", [ED25519, RSA_2048, ec.generate_private_key(ec.SECP384R1())], ids=["ed25519", "rsa", "ecdsa"])
def test_it_computes_the_fingerprint_ssh_keygen_prints(key, tmp_path: Path) -> None:
    path = tmp_path / "id.pub"
    path.write_text(public_line(key) + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    assert parse_public_key(public_line(key)).fingerprint == out.split()[1]


def ssh_keygen_sign(private_key, message: str, tmp_path: Path, namespace: str = SIGNATURE_NAMESPACE) -> str:
    """What the user does on their own machine: the real ssh-keygen signs the challenge with their key."""
    path = tmp_path / f"id_{id(private_key)}"
    path.write_text(private_pem(private_key))
    path.chmod(0o600)
    done = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-n", namespace, "-f", str(path)], input=message, capture_output=True, text=True, check=True
    )
    return done.stdout


def add_key(client, private_key, tmp_path: Path, title: str = "") -> tuple:
    """Both steps as the page does them: paste the key, run the command shown, paste its output."""
    line = public_line(private_key)
    first = client.post("/account/keys/", {"title": title, "public_key": line})
    command = re.search(r'<code id="sign-command"[^>]*>(.*?)</code>', first.content.decode()).group(1)
    challenge = re.match(r"printf %s (\S+) \| ssh-keygen -Y sign -n diploi-ssh-key -f ~/.ssh/id_\w+$", command).group(1)
    signature = ssh_keygen_sign(private_key, challenge, tmp_path)
    return first, client.post("/account/keys/", {"title": title, "public_key": line, "step": "sign", "signature": signature})


@pytest.mark.parametrize(
    "key",
    [ED25519, RSA_2048, *(ec.generate_private_key(curve()) for curve in (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1))],
    ids=["ed25519", "rsa", "nistp256", "nistp384", "nistp521"],
)
def test_it_adds_a_key_once_its_holder_signs_the_challenge(cast, key, tmp_path: Path) -> None:
    client = cast.client(cast.developer)
    first = client.post("/account/keys/", {"title": "", "public_key": public_line(key)}).content.decode()
    assert not SSHKey.objects.exists()  # the first step only shows the challenge, without an error
    assert 'name="signature"' in first and 'id="sign-command"' in first and 'role="alert"' not in first
    _, second = add_key(client, key, tmp_path)
    assert second.status_code == 302
    saved = SSHKey.objects.get(user=cast.developer)
    assert saved.title == "me@laptop"  # the comment is the default title
    assert saved.public_key == public_line(key, comment="")


def test_it_lists_and_deletes_keys(cast, tmp_path: Path) -> None:
    client = cast.client(cast.developer)
    add_key(client, ED25519, tmp_path)
    key = SSHKey.objects.get(user=cast.developer)
    assert key.public_key == public_line(ED25519, comment="")
    page = client.get("/account/keys/").content.decode()
    assert key.fingerprint in page and "me@laptop" in page

    r = client.post(f"/account/keys/{key.pk}/delete/")
    assert r.status_code == 302
    assert not SSHKey.objects.exists()


def _post_signed(client, private_key, signature: str):
    return client.post("/account/keys/", {"title": "", "public_key": public_line(private_key), "step": "sign", "signature": signature})


def _challenge(cast, user, private_key) -> str:
    return challenge_for(user.pk, parse_public_key(public_line(private_key)).fingerprint)


def test_it_refuses_a_signature_that_proves_nothing(cast, tmp_path: Path) -> None:
    client = cast.client(cast.developer)
    mine = _challenge(cast, cast.developer, ED25519)
    someone_elses = _challenge(cast, cast.owner, ED25519)
    good = ssh_keygen_sign(ED25519, mine, tmp_path)
    cases = [
        ("", "Run the command above and paste what it prints"),
        ("hello", "Paste the whole signature"),
        (good.replace(good.splitlines()[2], good.splitlines()[2][:-8]), "truncated"),
        (good.replace(good.splitlines()[1], "!!!" + good.splitlines()[1][3:]), "not valid base64"),
        (ssh_keygen_sign(RSA_2048, mine, tmp_path), "made with a different key"),
        (ssh_keygen_sign(ED25519, mine, tmp_path, namespace="file"), "sign with -n diploi-ssh-key"),
        (ssh_keygen_sign(ED25519, someone_elses, tmp_path), "does not match"),  # a challenge is per user and key
        (ssh_keygen_sign(ED25519, mine + "x", tmp_path), "does not match"),
    ]
    for signature, message in cases:
        body = _post_signed(client, ED25519, signature).content.decode()
        assert message in body, (message, body)
    assert not SSHKey.objects.exists()
    # `echo` instead of `printf %s` (a trailing newline) still proves possession.
    assert _post_signed(client, ED25519, ssh_keygen_sign(ED25519, mine + "\n", tmp_path)).status_code == 302
    assert SSHKey.objects.get().user == cast.developer


def test_someone_elses_public_key_cannot_be_registered_or_probed(cast, tmp_path: Path) -> None:
    add_key(cast.client(cast.owner), RSA_2048, tmp_path, title="laptop")
    attacker = cast.client(cast.viewer)
    # Holding only the public key, the first step looks exactly like it does for a key nobody has.
    registered = attacker.post("/account/keys/", {"public_key": public_line(RSA_2048)}).content.decode()
    fresh = attacker.post("/account/keys/", {"public_key": public_line(ED25519)}).content.decode()
    assert "already registered" not in registered
    assert registered.count('role="alert"') == fresh.count('role="alert"') == 0
    # …and no signature it can make gets the key.
    body = _post_signed(attacker, RSA_2048, ssh_keygen_sign(ED25519, _challenge(cast, cast.viewer, RSA_2048), tmp_path)).content.decode()
    assert "made with a different key" in body and "already registered" not in body
    assert SSHKey.objects.get().user == cast.owner
    # The key's holder learns that it is registered — after proving it is theirs.
    _, again = add_key(cast.client(cast.developer), RSA_2048, tmp_path)
    assert "This key is already registered." in again.content.decode()
    assert SSHKey.objects.count() == 1


def test_it_never_stores_or_echoes_a_private_key(cast) -> None:
    pem = private_pem(ED25519)
    r = cast.client(cast.owner).post("/account/keys/", {"title": "oops", "public_key": pem})
    body = r.content.decode()
    assert "This is a private key" in body
    secret_line = pem.splitlines()[1]
    assert secret_line not in body
    assert not SSHKey.objects.exists()


def test_it_renders_the_htmx_partial_with_errors(cast) -> None:
    r = cast.client(cast.owner).post("/account/keys/", {"public_key": "nonsense"}, headers={"HX-Request": "true"})
    body = r.content.decode()
    assert r.status_code == 200
    assert body.lstrip().startswith('<div id="ssh-keys">')
    assert "<html" not in body
    assert "does not look like an SSH public key" in body
    assert "nonsense</textarea>" in body  # what was typed stays, to be corrected


def test_it_answers_404_for_someone_elses_key(cast, tmp_path: Path) -> None:
    add_key(cast.client(cast.owner), ED25519, tmp_path, title="k")
    key = SSHKey.objects.get()
    r = cast.client(cast.outsider).post(f"/account/keys/{key.pk}/delete/")
    assert r.status_code == 404
    assert SSHKey.objects.filter(pk=key.pk).exists()


def test_it_requires_login(db) -> None:
    from django.test import Client

    r = Client().get("/account/keys/")
    assert r.status_code == 302 and "/accounts/login/" in r["Location"]


# Security keys (FIDO, `ssh-keygen -t ed25519-sk`): no authenticator here, so the test plays its part,
# building the public key and the SSHSIG signature in OpenSSH's formats (PROTOCOL.u2f, PROTOCOL.sshsig).


def _ssh_string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def _sk_key(kind: str) -> tuple[object, str]:
    if kind == "sk-ssh-ed25519@openssh.com":
        private = ed25519.Ed25519PrivateKey.generate()
        point = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        blob = _ssh_string(kind.encode()) + _ssh_string(point)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        point = private.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        blob = _ssh_string(kind.encode()) + _ssh_string(b"nistp256") + _ssh_string(point)
    blob += _ssh_string(b"ssh:")
    return private, f"{kind} {base64.b64encode(blob).decode()} yubikey"


def _sk_sign(private, line: str, message: str, flags: int = 0x01, namespace: str = SIGNATURE_NAMESPACE) -> str:
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    kind, blob = line.split()[0], base64.b64decode(line.split()[1])
    inner = b"SSHSIG" + _ssh_string(namespace.encode()) + _ssh_string(b"") + _ssh_string(b"sha512")
    inner += _ssh_string(hashlib.sha512(message.encode()).digest())
    counter = (7).to_bytes(4, "big")
    signed = hashlib.sha256(b"ssh:").digest() + bytes([flags]) + counter + hashlib.sha256(inner).digest()
    if kind.startswith("sk-ssh-ed25519"):
        raw = private.sign(signed)
    else:
        r, s = decode_dss_signature(private.sign(signed, ec.ECDSA(hashes.SHA256())))
        mpint = lambda n: _ssh_string(n.to_bytes((n.bit_length() + 8) // 8, "big"))  # noqa: E731
        raw = mpint(r) + mpint(s)
    sig = _ssh_string(kind.encode()) + _ssh_string(raw) + bytes([flags]) + counter
    body = b"SSHSIG" + (1).to_bytes(4, "big") + _ssh_string(blob) + _ssh_string(namespace.encode()) + _ssh_string(b"")
    body += _ssh_string(b"sha512") + _ssh_string(sig)
    armored = base64.b64encode(body).decode()
    return "-----BEGIN SSH SIGNATURE-----\n" + armored + "\n-----END SSH SIGNATURE-----\n"


@pytest.mark.parametrize("kind", ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"])
def test_security_keys_are_accepted_with_a_touch_confirmed_signature(cast, kind: str) -> None:
    import asyncssh

    private, line = _sk_key(kind)
    parsed = parse_public_key(line)
    assert parsed.key_type == kind and parsed.comment == "yubikey"
    assert asyncssh.import_public_key(line).algorithm == kind.encode()  # the SSH gateway reads it too
    client = cast.client(cast.developer)
    challenge = challenge_for(cast.developer.pk, parsed.fingerprint)

    def post(signature: str):
        return client.post("/account/keys/", {"public_key": line, "step": "sign", "signature": signature})

    assert "did not confirm a touch" in post(_sk_sign(private, line, challenge, flags=0x00)).content.decode()
    assert "does not match" in post(_sk_sign(private, line, challenge + "x")).content.decode()
    other, _ = _sk_key(kind)
    assert "does not match" in post(_sk_sign(other, line, challenge)).content.decode()
    assert not SSHKey.objects.exists()
    assert post(_sk_sign(private, line, challenge)).status_code == 302
    assert SSHKey.objects.get().key_type == kind
