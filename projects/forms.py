from django import forms
from django.db.models import Q
from django.utils.text import slugify

from accounts.models import User
from projects.models import Membership, Project, Role


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


class MemberForm(forms.Form):
    who = forms.CharField(label="Username or email", max_length=254)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)

    def __init__(self, *args, project: Project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.project = project

    def clean_who(self) -> User:
        who = self.cleaned_data["who"].strip()
        users = list(User.objects.filter(Q(username__iexact=who) | Q(email__iexact=who), is_active=True)[:2])
        if not users:
            raise forms.ValidationError(f"There is no user “{who}”.")
        if len(users) > 1:
            raise forms.ValidationError(f"“{who}” matches more than one user; use the username.")
        if Membership.objects.filter(project=self.project, user=users[0]).exists():
            raise forms.ValidationError(f"{users[0].username} is already a member.")
        return users[0]


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
