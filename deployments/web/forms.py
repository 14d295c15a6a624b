import re

from django import forms

from deployments.models import Deployment, EnvVar, Stage
from projects import values
from projects.models import Project
from projects.stack import branches, check_branch
from projects.validators import has_control_character, own_env_name_error

MAX_ENV_VALUE = 32 * 1024


class BranchForm(forms.Form):
    """A branch of the project's repository (it must exist there)."""

    branch = forms.CharField(max_length=255)

    def __init__(self, *args, project: Project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.project = project

    def clean_branch(self) -> str:
        check_branch(self.project, self.cleaned_data["branch"])
        return self.cleaned_data["branch"]


class NewDeploymentForm(BranchForm):
    name = forms.CharField(max_length=63, help_text="Also its address: lowercase letters, digits and '-'.")
    stage = forms.ChoiceField(choices=Stage.choices, initial=Stage.DEVELOPMENT)
    enabled = forms.BooleanField(required=False, initial=True, label="Start it right away")
    field_order = ["name", "stage", "branch", "enabled"]

    def __init__(self, *args, project: Project, default_branch: str, **kwargs) -> None:
        super().__init__(*args, project=project, **kwargs)
        self.fields["branch"].initial = default_branch
        if known := branches(project):
            self.fields["branch"].widget = forms.Select(choices=[(b, b) for b in known])


class EnvVarForm(forms.Form):
    service = forms.ChoiceField(label="Applies to", required=False)
    key = forms.CharField(max_length=255, label="Name")
    value = forms.CharField(required=False, widget=forms.TextInput(attrs={"autocomplete": "off"}), max_length=MAX_ENV_VALUE)
    secret = forms.BooleanField(required=False, help_text="Secret values are never shown again.")

    def __init__(self, *args, components: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["service"].choices = [("", "All components"), *((c, c) for c in components)]

    def clean_key(self) -> str:
        key = self.cleaned_data["key"].strip()
        if err := own_env_name_error(key):
            raise forms.ValidationError(f"“{key}” {err}.")
        return key

    def clean_value(self) -> str:
        value = self.cleaned_data["value"]
        if "\x00" in value:
            raise forms.ValidationError("Values cannot contain NUL characters.")
        return value


class DeleteDeploymentForm(forms.Form):
    confirm = forms.CharField(label="Type the deployment's name to confirm")

    def __init__(self, *args, deployment: Deployment, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deployment = deployment

    def clean_confirm(self) -> str:
        if self.cleaned_data["confirm"].strip() != self.deployment.name:
            raise forms.ValidationError(f"Type “{self.deployment.name}” exactly to delete this deployment.")
        return self.cleaned_data["confirm"]


class CloneForm(NewDeploymentForm):
    copy_storage = forms.BooleanField(
        required=False,
        initial=True,
        label="Copy storage",
        help_text="Start from a copy of this deployment's databases and files (and code, for development).",
    )


def parameter_form(parameters: list[dict], current: dict[str, EnvVar], data=None) -> forms.Form:
    """A form for one component's package parameters, typed as the package declares them.
    Read-only parameters are shown but locked; secrets are never rendered back."""
    fields: dict[str, forms.Field] = {}
    for p in parameters:
        value = current[p["key"]].value if p["key"] in current else p["default"]
        common = {"label": p["label"], "required": False, "disabled": p["readonly"], "help_text": p.get("description", "")}
        generated = values.generates(p["default"])
        derived = bool(values.references(p["default"])) and not generated  # from others or the runtime
        if p["type"] == "integer" and not (derived and p["key"] not in current):
            field = forms.IntegerField(initial=value or None, **common)
        elif p["type"] == "boolean":
            field = forms.BooleanField(initial=str(value).lower() == "true", **common)
        elif p["type"] == "secret":
            state = "Set" if p["key"] in current else "Generated for this deployment" if generated else "Not set"
            if derived and p["key"] not in current:
                state = f"Built from {p['default']}"
            common["help_text"] = state
            widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
            field = forms.CharField(widget=widget, max_length=MAX_ENV_VALUE, **common)
        else:
            field = forms.CharField(initial=value, max_length=MAX_ENV_VALUE, **common)
        field.group = p["group"]  # the package's parameterGroups heading and description
        field.group_description = p.get("group_description", "")
        fields[p["key"]] = field
        if regenerable(p):
            again = forms.BooleanField(
                label=f"Generate a new {p['label'].lower()}", required=False, help_text="on save; then the service restarts"
            )
            again.group, again.group_description = field.group, field.group_description
            fields[f"{p['key']}{REGENERATE}"] = again
    return type("ParameterForm", (forms.Form,), fields)(data)


REGENERATE = "__regenerate"


def regenerable(p: dict) -> bool:
    """A generated secret a user may replace by a new generated one (not a read-only one: a
    database keeps the password it was created with)."""
    return p["type"] == "secret" and values.generates(p["default"]) and not p["readonly"]


def regenerated(parameters: list[dict], form: forms.Form) -> list[str]:
    return [p["key"] for p in parameters if regenerable(p) and form.cleaned_data.get(f"{p['key']}{REGENERATE}")]


def parameter_values(parameters: list[dict], form: forms.Form) -> dict[str, tuple[str, bool]]:
    """What to store: {key: (value, secret)}; an empty secret keeps the stored one."""
    found = {}
    for p in parameters:
        if p["readonly"]:
            continue
        v = form.cleaned_data.get(p["key"])
        if p["type"] == "secret":
            if v:
                found[p["key"]] = (v, True)
        elif p["type"] == "boolean":
            found[p["key"]] = ("true" if v else "false", False)
        else:
            found[p["key"]] = ("" if v is None else str(v), False)
    return found


# A registry as image references name it: a host name (or IPv4 address) and an optional port; no scheme,
# no path, no user (`ghcr.io`, `registry.example.com:5000`).
REGISTRY_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*(:[0-9]{1,5})?$")


class RegistryForm(forms.Form):
    """A login to an image registry: the host as image references name it, a user and a password or token."""

    host = forms.CharField(max_length=253, help_text="As image references name it: ghcr.io, registry.example.com:5000")
    username = forms.CharField(max_length=200)
    password = forms.CharField(max_length=4096, strip=False, widget=forms.PasswordInput, label="Password or token")

    def clean_host(self) -> str:
        host = self.cleaned_data["host"].strip().lower().removesuffix("/")
        if "://" in host:
            raise forms.ValidationError("Give the host only, without https://.")
        port = host.rsplit(":", 1)[1] if ":" in host else "443"
        if not REGISTRY_HOST.match(host) or not 0 < int(port) < 65536:
            raise forms.ValidationError(
                "Not a registry host: letters, digits, '-' and '.', and an optional :port (ghcr.io, registry.example.com:5000)."
            )
        return host

    def clean_username(self) -> str:
        name = self.cleaned_data["username"]
        if ":" in name or has_control_character(name):
            raise forms.ValidationError("A user name has no ':' and no control characters.")
        return name

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if not password.strip() or has_control_character(password):
            raise forms.ValidationError("A password or token of printable characters is needed.")
        return password
