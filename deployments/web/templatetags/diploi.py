import time
from datetime import datetime

from django import template
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.utils.html import format_html

from deployments.models import StateTransition
from deployments.status import tree
from projects.validators import without_credentials

register = template.Library()


@register.filter
def transition_word(transition: StateTransition) -> str:
    """What a state change moved the deployment to, in the status words (deployments.status.tree)."""
    return tree.transition_word(transition.from_state, transition.to_state)


@register.filter
def credentials_hidden(address: str) -> str:
    """A Git address as shown: any user:token it carries replaced by …"""
    return without_credentials(str(address))


@register.filter
def dot(colour: object) -> str:
    value = getattr(colour, "value", colour)
    return "grey" if value == "pending" else value


@register.filter
def bytes_human(n: int | None) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@register.filter
def uptime(started_at: float | None) -> str:
    """How long since a unix time, in the largest two units (e.g. “2 h 5 min”)."""
    if not started_at:
        return ""
    seconds = max(0, int(time.time() - started_at))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")]
    shown = [f"{n} {unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0 s"


@register.filter
def last_lines(text: str | None, count: int = 12) -> str:
    """The end of a log: what a running build printed last."""
    return "\n".join((text or "").rstrip("\n").splitlines()[-int(count) :])


@register.filter
def ago(moment: datetime | None) -> str:
    """When something happened, as a `<time>` the page keeps current ("3 min ago"): the words are right
    when rendered and the browser updates them, so a fragment served from the cache never tells an
    old age."""
    if moment is None:
        return ""
    title = f"{moment:%Y-%m-%d %H:%M:%S %Z}"
    return format_html('<time datetime="{}" data-ago title="{}">{}</time>', moment.isoformat(), title, naturaltime(moment))
