import re

from django.core import mail
from django.test import Client

from accounts.models import User


def test_it_signs_up_logs_out_and_in(db, teams) -> None:
    client = Client()
    r = client.post(
        "/accounts/signup/",
        {"email": "ada@example.com", "username": "ada", "password1": "correct-horse-9", "password2": "correct-horse-9"},
    )
    assert r.status_code == 302
    assert User.objects.filter(username="ada").exists()
    page = client.get("/projects/")
    assert page.status_code == 200
    # no mail server here: no word of a confirmation mail that nobody would receive
    assert "confirm" not in page.content.decode().lower() and len(mail.outbox) == 0

    client.post("/accounts/logout/")
    assert client.get("/projects/").status_code == 302
    r = client.post("/accounts/login/", {"login": "ada", "password": "correct-horse-9"})
    assert r.status_code == 302
    assert client.get("/projects/").status_code == 200


def test_it_refuses_a_wrong_password(db) -> None:
    User.objects.create_user("ada", "ada@example.com", "correct-horse-9")
    r = Client().post("/accounts/login/", {"login": "ada", "password": "nope"})
    assert r.status_code == 200 and "not correct" in r.content.decode()


def test_it_rejects_a_duplicate_username(db, teams) -> None:
    User.objects.create_user("ada", "ada@example.com", "correct-horse-9")
    r = Client().post(
        "/accounts/signup/",
        {"email": "other@example.com", "username": "ada", "password1": "correct-horse-9", "password2": "correct-horse-9"},
    )
    assert "already" in r.content.decode()
    assert User.objects.count() == 1


def test_it_resets_a_password_by_email(db) -> None:
    User.objects.create_user("ada", "ada@example.com", "old-password-1")
    client = Client()
    client.post("/accounts/password/reset/", {"email": "ada@example.com"})
    assert len(mail.outbox) == 1
    link = re.search(r"http://\S+/accounts/password/reset/key/\S+", mail.outbox[0].body).group(0)
    path = "/" + link.split("/", 3)[3]
    r = client.get(path)
    assert r.status_code == 302  # allauth moves the key into the session
    r = client.post(r["Location"], {"password1": "brand-new-pw-7", "password2": "brand-new-pw-7"})
    assert r.status_code == 302
    assert User.objects.get(username="ada").check_password("brand-new-pw-7")


def test_github_login_shows_only_when_configured(db, tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import BASE_DIR

    assert "GitHub" not in Client().get("/accounts/login/").content.decode()
    assert Client().get("/accounts/github/login/").status_code == 404
    # Configured at start (the provider is an installed app only then): a process of its own.
    env = {**os.environ, "DIPLOI_DATA_DIR": str(tmp_path), "DIPLOI_GITHUB_CLIENT_ID": "id", "DIPLOI_GITHUB_SECRET": "s"}
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=BASE_DIR, env=env, check=True, timeout=120)
    probe = (
        "from django.test import Client; c = Client(HTTP_HOST='localhost'); "
        "print(c.get('/accounts/login/').content.decode().count('GitHub'), c.get('/accounts/github/login/').status_code)"
    )
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", probe], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    shown, status = out.stdout.strip().splitlines()[-1].split()
    assert int(shown) >= 1 and status != "404", out.stderr
