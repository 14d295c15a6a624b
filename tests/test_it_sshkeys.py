import base64
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from accounts.models import SSHKey
from accounts.sshkeys import InvalidKey, parse_public_key

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
)
def test_it_rejects_bad_keys(text: str, message: str) -> None:
    with pytest.raises(InvalidKey) as e:
        parse_public_key(text)
    assert message in str(e.value)


@pytest.mark.parametrize("key", [ED25519, RSA_2048, ec.generate_private_key(ec.SECP384R1())])
def test_it_computes_the_fingerprint_ssh_keygen_prints(key, tmp_path: Path) -> None:
    path = tmp_path / "id.pub"
    path.write_text(public_line(key) + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    assert parse_public_key(public_line(key)).fingerprint == out.split()[1]


def test_it_adds_lists_and_deletes_keys(cast) -> None:
    client = cast.client(cast.developer)
    line = public_line(ED25519)
    r = client.post("/account/keys/", {"title": "", "public_key": line})
    assert r.status_code == 302
    key = SSHKey.objects.get(user=cast.developer)
    assert key.title == "me@laptop"  # the comment is the default title
    assert key.public_key == public_line(ED25519, comment="")

    page = client.get("/account/keys/").content.decode()
    assert key.fingerprint in page and "me@laptop" in page

    r = client.post(f"/account/keys/{key.pk}/delete/")
    assert r.status_code == 302
    assert not SSHKey.objects.exists()


def test_it_rejects_a_key_registered_by_anyone(cast) -> None:
    line = public_line(RSA_2048)
    cast.client(cast.owner).post("/account/keys/", {"title": "laptop", "public_key": line})
    r = cast.client(cast.viewer).post("/account/keys/", {"title": "mine", "public_key": line})
    assert r.status_code == 200
    assert "This key is already registered." in r.content.decode()
    assert SSHKey.objects.count() == 1
    assert SSHKey.objects.get().user == cast.owner


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


def test_it_answers_404_for_someone_elses_key(cast) -> None:
    cast.client(cast.owner).post("/account/keys/", {"title": "k", "public_key": public_line(ED25519)})
    key = SSHKey.objects.get()
    r = cast.client(cast.outsider).post(f"/account/keys/{key.pk}/delete/")
    assert r.status_code == 404
    assert SSHKey.objects.filter(pk=key.pk).exists()


def test_it_requires_login(db) -> None:
    from django.test import Client

    r = Client().get("/account/keys/")
    assert r.status_code == 302 and "/accounts/login/" in r["Location"]
