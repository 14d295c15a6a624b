from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.access import get_ssh_key_for_user
from accounts.forms import SSHKeyForm
from accounts.models import SSHKey
from diploi.http import redirect_to


def _keys_page(request: HttpRequest, form: SSHKeyForm) -> HttpResponse:
    template = "accounts/ssh_keys.html"
    if request.htmx:
        template += "#keys"
    ctx = {"form": form, "keys": SSHKey.objects.filter(user=request.user)}
    return TemplateResponse(request, template, ctx)


@login_required
@require_GET
def settings(request: HttpRequest) -> HttpResponse:
    return redirect_to(request, "accounts:ssh_keys")


@login_required
@require_http_methods(["GET", "POST"])
def ssh_keys(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _keys_page(request, SSHKeyForm(user=request.user))

    form = SSHKeyForm(request.POST, user=request.user)
    if form.is_valid() and form.proven:
        try:
            with transaction.atomic():
                SSHKey.objects.create(
                    user=request.user,
                    title=form.cleaned_data["title"],
                    key_type=form.parsed.key_type,
                    public_key=form.parsed.openssh,
                    fingerprint=form.parsed.fingerprint,
                )
        except IntegrityError:
            # Registered by someone else between the check and the insert.
            form.add_error("public_key", "This key is already registered.")
        else:
            messages.success(request, f"SSH key “{form.cleaned_data['title']}” added.")
            if request.htmx:
                return _keys_page(request, SSHKeyForm(user=request.user))
            return redirect_to(request, "accounts:ssh_keys")
    return _keys_page(request, form)


@login_required
@require_POST
def ssh_key_delete(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_ssh_key_for_user(request.user, pk)
    key.delete()
    messages.success(request, f"SSH key “{key.title}” deleted.")
    if request.htmx:
        return _keys_page(request, SSHKeyForm(user=request.user))
    return redirect_to(request, "accounts:ssh_keys")
