"""Single-user or team mode: a platform whose runtime cannot keep deployments from reaching it and
each other serves one user only — open sign-up and adding members are refused, and every page says
why — unless the operator explicitly allows it (DIPLOI_ALLOW_UNCONFINED=1)."""

from dataclasses import dataclass

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
from django.http import HttpRequest

from deployments.runtimes import get_runtime
from deployments.runtimes.base import Confinement


@dataclass(frozen=True)
class Mode:
    teams: bool  # sign-up and members allowed
    confinement: Confinement
    overridden: bool = False  # unconfined, and the operator allowed teams anyway

    @property
    def refusal(self) -> str:
        """Why this platform serves a single user ("" in team mode)."""
        return "" if self.teams else f"This Diploi runs in single-user mode: {self.confinement.describe()}."

    @property
    def notice(self) -> str:
        """What every page says while deployments are not confined ("" when they are)."""
        if self.overridden:
            return f"The operator allowed teams on this Diploi although {self.confinement.describe()}."
        return self.refusal

    def describe(self) -> str:
        """One line for `up` and the logs."""
        if self.overridden:
            return f"{self.confinement.describe()}; team mode anyway (DIPLOI_ALLOW_UNCONFINED=1)"
        if self.teams:
            return f"{self.confinement.describe()}; team mode"
        return f"{self.confinement.describe()}; single-user mode (sign-up and new members refused)"


def mode() -> Mode:
    confinement = get_runtime().confinement()  # cheap: what it probes of the machine is probed once
    allowed = settings.DIPLOI_ALLOW_UNCONFINED
    return Mode(teams=confinement.complete or allowed, confinement=confinement, overridden=allowed and not confinement.complete)


def refuse_new_members() -> str:
    """Why members cannot be added now ("" when they can)."""
    return mode().refusal


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return mode().teams and super().is_open_for_signup(request)


def single_user_banner(request: HttpRequest) -> dict[str, str]:
    """Context processor: the banner every page shows while deployments are not confined."""
    current = mode()
    return {"confinement_notice": current.notice, "signup_refusal": current.refusal}
