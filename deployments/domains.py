"""Custom domains: validation of the name, the CNAME target, and the DNS check."""

import re
import unicodedata
from datetime import datetime

import dns.exception
import dns.resolver
import idna
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.crypto import salted_hmac

from deployments.models import Deployment, Domain
from deployments.runtimes.hostnames import deployment_host

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
    if any(unicodedata.category(c) == "Cf" for c in name):  # zero-width and other invisible characters
        raise ValidationError(f"“{raw}” is not a valid international domain name: it holds an invisible character.")
    try:
        # IDNA 2008 with UTS #46 mapping, as browsers resolve names: ß stays ß (xn--zca), a zero-width
        # character is refused rather than dropped (Python's "idna" codec is IDNA 2003, which does both)
        ascii_name = name if name.isascii() else idna.encode(name, uts46=True).decode()  # (plain labels: checked below)
        if "xn--" in ascii_name:
            idna.decode(ascii_name)  # an xn-- label must be valid punycode of a valid name ("xn--zz" is not)
    except (idna.IDNAError, UnicodeError):
        raise ValidationError(f"“{raw}” is not a valid international domain name.") from None
    labels = ascii_name.split(".")
    if len(labels) < 2 or len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
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
    return deployment_host(deployment.slug, deployment.project.slug)


def _earlier_target(deployment: Deployment) -> str:
    """What the CNAME target was before host names became one label (a record made then still counts)."""
    return f"{deployment.slug}.{deployment.project.slug}.{settings.DIPLOI_BASE_DOMAIN}"


CHALLENGE_LABEL = "_diploi-challenge"


def challenge_name(domain: Domain) -> str:
    return f"{CHALLENGE_LABEL}.{domain.name}"


def challenge_value(deployment: Deployment) -> str:
    """The TXT value that proves control of a domain for this deployment (e.g. for an apex, which cannot be a CNAME)."""
    return "diploi-verify=" + salted_hmac("deployments.domain-challenge", str(deployment.pk)).hexdigest()[:32]


def _resolver() -> dns.resolver.Resolver:
    """The machine's resolver, or DIPLOI_DNS_SERVERS ("address" or "address:port", one port for all)."""
    if not settings.DIPLOI_DNS_SERVERS:
        return dns.resolver.get_default_resolver()
    resolver = dns.resolver.Resolver(configure=False)
    addresses = [entry.rsplit(":", 1) if entry.count(":") == 1 else [entry] for entry in settings.DIPLOI_DNS_SERVERS]
    resolver.nameservers = [parts[0] for parts in addresses]
    resolver.port = int(addresses[0][1]) if len(addresses[0]) == 2 else 53
    return resolver


def _answer(name: str, rdtype: str):
    try:
        return _resolver().resolve(name, rdtype, lifetime=5)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None


def lookup_cname(name: str) -> str | None:
    """The CNAME target of `name` as DNS answers now, or None when it has none."""
    answer = _answer(name, "CNAME")
    return str(answer[0].target).rstrip(".").lower() if answer else None


def lookup_txt(name: str) -> list[str]:
    answer = _answer(name, "TXT")
    return [b"".join(r.strings).decode(errors="replace") for r in answer] if answer else []


def check_domain(domain: Domain) -> tuple[bool, str, datetime]:
    """Whether DNS shows the domain is this deployment's now — a CNAME to its host, or the TXT token
    at _diploi-challenge.<domain> — why, and when it was checked."""
    target, challenge = cname_target(domain.deployment), challenge_name(domain)
    try:
        found = lookup_cname(domain.name)
        if found in (target, _earlier_target(domain.deployment)):
            return True, f"CNAME points to {found}", timezone.now()
        if challenge_value(domain.deployment) in lookup_txt(challenge):
            return True, f"TXT record {challenge} holds this deployment's token", timezone.now()
    except dns.exception.DNSException as e:
        return False, f"DNS lookup failed: {e.__class__.__name__}", timezone.now()
    cname = f"CNAME points to {found}, not {target}" if found else f"No CNAME record found for {domain.name}"
    return False, f"{cname}, and no TXT record {challenge} with this deployment's token", timezone.now()
