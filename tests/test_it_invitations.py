"""Members join by accepting an invitation: by the link the owner sends, or on their Projects page when it is
addressed to their username or a verified address. Inviting says nothing about who has an account."""

import html
import re

from allauth.account.models import EmailAddress
from django.core import mail
from django.utils import timezone

from projects.models import Invitation, Membership, Role
from tests.conftest import page_text


def invite(cast, who: str, role: str = "developer"):
    return cast.client(cast.owner).post(f"/projects/{cast.project.slug}/members/", {"who": who, "role": role})


def link_in(response) -> str:
    return re.search(r'<code id="invitation-link">http://testserver(/invitations/[^<]+/)</code>', response.content.decode()).group(1)


def invitations_page(client) -> str:
    return page_text(client.get("/projects/"))


def test_an_invitation_to_a_username_waits_on_the_invitees_projects_page(cast, teams) -> None:
    r = invite(cast, "Outsider", "viewer")
    assert r.status_code == 200 and "outsider is invited." in r.content.decode() and link_in(r)
    assert not Membership.objects.filter(user=cast.outsider).exists()  # not a member until they accept
    assert "Invited" in cast.client(cast.owner).get(f"/projects/{cast.project.slug}/settings/").content.decode()

    outsider = cast.client(cast.outsider)
    assert "owner invites you to Shop as viewer." in invitations_page(outsider)
    invitation = Invitation.objects.get()
    r = outsider.post(f"/invitations/mine/{invitation.pk}/", {"answer": "accept"})
    assert r.status_code == 302 and r["Location"] == f"/projects/{cast.project.slug}/"
    assert Membership.objects.get(user=cast.outsider).role == Role.VIEWER
    assert not Invitation.objects.exists()
    assert outsider.get(f"/projects/{cast.project.slug}/").status_code == 200


def test_an_invitation_to_an_address_reaches_only_someone_who_verified_it(cast, teams) -> None:
    r = invite(cast, "OUTSIDER@example.com")
    invitation = Invitation.objects.get()
    assert invitation.invitee == "outsider@example.com"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["outsider@example.com"]
    assert f"http://testserver{link_in(r)}" in mail.outbox[0].body
    assert "An e-mail with the link was sent to outsider@example.com." in r.content.decode()

    # The outsider's account carries that address, unverified: anyone can type any address at sign-up.
    outsider = cast.client(cast.outsider)
    assert "Shop" not in invitations_page(outsider)
    assert outsider.post(f"/invitations/mine/{invitation.pk}/", {"answer": "accept"}).status_code == 404
    assert not Membership.objects.filter(user=cast.outsider).exists()

    EmailAddress.objects.create(user=cast.outsider, email="outsider@example.com", verified=True, primary=True)
    assert "invites you to" in invitations_page(outsider)
    assert outsider.post(f"/invitations/mine/{invitation.pk}/", {"answer": "accept"}).status_code == 302
    assert Membership.objects.get(user=cast.outsider).role == Role.DEVELOPER


def _settled(response, who: str) -> str:
    """The page with what legitimately differs (address, link, CSRF tokens, expiry minute) replaced."""
    body = response.content.decode().replace(who, "WHO")
    body = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d", "WHEN", body)  # two invitations a minute apart
    body = re.sub(r"/invitations/[\w-]+/", "/invitations/TOKEN/", body)
    return re.sub(r'(csrfmiddlewaretoken" value=|"X-CSRFToken": )"[^"]+"', r"\1T", body)


def test_inviting_does_not_tell_whether_an_address_has_an_account(cast, teams) -> None:
    known = invite(cast, "outsider@example.com")
    Invitation.objects.all().delete()
    unknown = invite(cast, "nobody@example.com")
    assert known.status_code == unknown.status_code == 200
    assert _settled(known, "outsider@example.com") == _settled(unknown, "nobody@example.com")
    assert "is invited" in page_text(unknown) and "There is no user" not in page_text(unknown)


def test_the_link_works_once_for_whoever_holds_it(cast, teams) -> None:
    path = link_in(invite(cast, "ada", "viewer"))
    assert cast.client(None).get(path)["Location"].startswith("/accounts/login/?next=/invitations/")
    outsider = cast.client(cast.outsider)
    assert "owner invites ada to the project Shop as viewer." in page_text(outsider.get(path))
    assert outsider.post(path, {"answer": "accept"}).status_code == 302
    assert Membership.objects.get(user=cast.outsider).role == Role.VIEWER
    used = outsider.get(path)
    assert used.status_code == 404 and "This invitation link does not work" in used.content.decode()
    assert cast.client(cast.developer).post(path, {"answer": "accept"}).status_code == 404


def test_declined_cancelled_replaced_and_expired_links_stop_working(cast, teams) -> None:
    outsider = cast.client(cast.outsider)
    declined = link_in(invite(cast, "ada"))
    assert outsider.post(declined, {"answer": "decline"}).status_code == 302
    assert not Invitation.objects.exists() and not Membership.objects.filter(user=cast.outsider).exists()

    cancelled = link_in(invite(cast, "ada"))
    cast.client(cast.owner).post(f"/projects/{cast.project.slug}/invitations/{Invitation.objects.get().pk}/cancel/")
    assert outsider.get(cancelled).status_code == 404

    replaced = link_in(invite(cast, "ada"))
    current = link_in(invite(cast, "ada", "viewer"))
    assert outsider.get(replaced).status_code == 404 and outsider.get(current).status_code == 200
    assert Invitation.objects.get().role == Role.VIEWER

    Invitation.objects.update(expires=timezone.now() - timezone.timedelta(seconds=1))
    assert outsider.get(current).status_code == 404
    assert outsider.post(current, {"answer": "accept"}).status_code == 404
    assert not Membership.objects.filter(user=cast.outsider).exists()


def test_nobody_answers_an_invitation_addressed_to_someone_else(cast, teams) -> None:
    invite(cast, "ada")
    invitation = Invitation.objects.get()
    for user in (cast.outsider, cast.viewer, cast.owner):
        assert cast.client(user).post(f"/invitations/mine/{invitation.pk}/", {"answer": "decline"}).status_code == 404
    assert Invitation.objects.filter(pk=invitation.pk).exists()


def test_accepting_keeps_the_stronger_role(cast, teams) -> None:
    path = link_in(invite(cast, "someone", "viewer"))
    cast.client(cast.developer).post(path, {"answer": "accept"})
    assert Membership.objects.get(user=cast.developer).role == Role.DEVELOPER
    path = link_in(invite(cast, "someone", "owner"))
    cast.client(cast.viewer).post(path, {"answer": "accept"})
    assert Membership.objects.get(user=cast.viewer).role == Role.OWNER


def test_bad_invitations_get_clear_errors(cast, teams) -> None:
    cases = {
        "developer": "developer is already a member.",
        "viewer@example.com": "viewer@example.com is already a member.",
        "ada@": "is not a valid e-mail address.",
        "ada lovelace": "A username has letters, digits and . + - _ only.",
        "": "This field is required.",
    }
    for who, message in cases.items():
        assert message in html.unescape(invite(cast, who).content.decode()), who
    assert not Invitation.objects.exists()


def test_single_user_mode_refuses_joining(cast, unconfined) -> None:
    _, token = Invitation.issue(cast.project, "outsider", "viewer", cast.owner)  # made while teams were allowed
    outsider = cast.client(cast.outsider)
    assert "You cannot join now: This Diploi runs in single-user mode" in page_text(outsider.get(f"/invitations/{token}/"))
    outsider.post(f"/invitations/{token}/", {"answer": "accept"})
    assert not Membership.objects.filter(user=cast.outsider).exists()
    assert "You cannot join “Shop” now" in invitations_page(outsider)
