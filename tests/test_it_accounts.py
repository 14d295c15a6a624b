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
    assert client.get("/projects/").status_code == 200

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


def test_github_login_shows_only_when_configured(db, settings) -> None:
    assert "GitHub" not in Client().get("/accounts/login/").content.decode()
    settings.SOCIALACCOUNT_PROVIDERS = {"github": {"APPS": [{"client_id": "id", "secret": "s", "key": ""}]}}
    assert "GitHub" in Client().get("/accounts/login/").content.decode()
