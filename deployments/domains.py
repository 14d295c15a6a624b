"""Custom domains: validation of the name, the CNAME target, and the DNS check."""

import re
from datetime import datetime

import dns.exception
import dns.resolver
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from deployments.models import Deployment, Domain

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalise_domain(raw: str) -> str:
    """The IDNA form of a host name a user typed, or ValidationError saying what is wrong."""
    name = raw.strip().rstrip(".").lower()
    if not name:
        raise ValidationError("Enter a domain name.")
    if "*" in name:
        raise ValidationError("Wildcard domains are not supported; add each host name.")
    if "://" in name or "/" in name or ":" in name:
        raise ValidationError("Enter only the host name, like www.example.com (no scheme, port or path).")
    try:
        ascii_name = name.encode("idna").decode()
    except UnicodeError:
        raise ValidationError(f"“{raw}” is not a valid international domain name.") from None
    labels = ascii_name.split(".")
    if len(labels) < 2 or len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValidationError(f"“{raw}” is not a valid domain name.")
    if labels[-1].isdigit():
        raise ValidationError("Enter a domain name, not an IP address.")
    base = settings.DIPLOI_BASE_DOMAIN.lower()
    if ascii_name == base or ascii_name.endswith("." + base) or ascii_name == "localhost" or ascii_name.endswith(".localhost"):
        raise ValidationError(f"Names under {base} are Diploi's own; its default hosts need no custom domain.")
    if Domain.objects.filter(name=ascii_name).exists():
        raise ValidationError(f"{ascii_name} is already in use by a deployment.")
    return ascii_name


def cname_target(deployment: Deployment) -> str:
    return f"{deployment.slug}.{deployment.project.slug}.{settings.DIPLOI_BASE_DOMAIN}"


def lookup_cname(name: str) -> str | None:
    """The CNAME target of `name` as DNS answers now, or None when it has none."""
    try:
        answer = dns.resolver.resolve(name, "CNAME", lifetime=5)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return str(answer[0].target).rstrip(".").lower()


def check_cname(domain: Domain) -> tuple[bool, str, datetime]:
    """Whether the domain's CNAME record points at its deployment now, why, and when it was checked."""
    target = cname_target(domain.deployment)
    try:
        found = lookup_cname(domain.name)
    except dns.exception.DNSException as e:
        return False, f"DNS lookup failed: {e.__class__.__name__}", timezone.now()
    if found == target:
        return True, f"CNAME points to {target}", timezone.now()
    if found:
        return False, f"CNAME points to {found}, not {target}", timezone.now()
    return False, f"No CNAME record found for {domain.name}", timezone.now()
