import re

from django import forms
from django.core import validators
from django.db.models import Q
from django.utils.text import slugify

from projects.git import GitError, remote_branches
from projects.models import Membership, Project, Role
from projects.validators import validate_branch_name, validate_repository


def unique_slug(name: str) -> str:
    base = slugify(name).replace("_", "-").strip("-")[:55].strip("-") or "project"
    slug, n = base, 2
    while Project.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


class ProjectForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = ["name", "repository", "default_branch"]
        labels = {"repository": "Repository", "default_branch": "Default branch"}

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not slugify(name):
            raise forms.ValidationError("The name must contain at least one letter or digit.")
        return name

    def clean(self) -> dict:
        """The repository must be readable now and have the default branch: nothing is saved otherwise."""
        data = super().clean()
        repository, branch = data.get("repository"), data.get("default_branch")
        if not repository or not branch or self.errors:
            return data
        try:
            validate_repository(repository)
            validate_branch_name(branch)
        except forms.ValidationError:
            return data  # the model's validation, next, says what is wrong with them
        try:
            found = remote_branches(repository)
        except GitError as e:
            self.add_error("repository", str(e))
            return data
        if branch not in found:
            has = f" (it has {', '.join(found[:10])})" if found else " (it has no branches yet)"
            self.add_error("default_branch", f"Branch “{branch}” does not exist in the repository{has}.")
        return data


class InviteForm(forms.Form):
    """Whom to invite. Whether the username or address has an account here is not looked up: the answer
    would tell an owner who is registered."""

    who = forms.CharField(
        label="Username or e-mail address",
        max_length=254,
        help_text="They join when they accept: from the link you send them, or on their Projects page.",
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)

    def __init__(self, *args, project: Project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.project = project

    def clean_who(self) -> str:
        who = self.cleaned_data["who"].strip().lower()
        if "@" in who:
            try:
                validators.validate_email(who)
            except forms.ValidationError:
                raise forms.ValidationError(f"“{who}” is not a valid e-mail address.") from None
        elif not re.fullmatch(r"[\w.+-]+", who):
            raise forms.ValidationError("A username has letters, digits and . + - _ only.")
        members = Membership.objects.filter(project=self.project)
        if members.filter(Q(user__username__iexact=who) | Q(user__email__iexact=who)).exists():
            raise forms.ValidationError(f"{who} is already a member.")
        return who


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class DeleteProjectForm(forms.Form):
    confirm = forms.CharField(label="Type the project's name to confirm")

    def __init__(self, *args, project: Project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.project = project

    def clean_confirm(self) -> str:
        if self.cleaned_data["confirm"].strip() != self.project.name:
            raise forms.ValidationError(f"Type “{self.project.name}” exactly to delete this project.")
        if self.project.deployments.exists():
            raise forms.ValidationError("Delete the project's deployments first.")
        return self.cleaned_data["confirm"]
