"""SSH usernames: `<component>-<deployment>`, or `<deployment>` for the stack's first component, with
`.<project>` after it when a user reaches two deployments of the same name. No asyncssh here: the
dashboard imports this to show the commands."""

from deployments.models import Deployment


def ssh_username(component: str, deployment: Deployment, default_component: str, qualify: bool = False) -> str:
    """The username the dashboard shows; `authorise.resolve` reads it back."""
    name = deployment.slug if component == default_component else f"{component}-{deployment.slug}"
    return f"{name}.{deployment.project.slug}" if qualify else name


def split_username(username: str) -> tuple[str, str]:
    """(name, project slug or "")."""
    name, _, project_slug = username.partition(".")
    return name, project_slug


def deployment_suffixes(name: str) -> list[str]:
    """Every way `name` may end in a deployment slug: the whole name and what follows each '-'."""
    return [name] + [name[i + 1 :] for i, c in enumerate(name) if c == "-"]


def component_of(name: str, deployment_slug: str) -> str:
    """The component part of `name` that ends in `deployment_slug` ("" for the default component)."""
    return name[: -len(deployment_slug)].removesuffix("-")


def recorded_command(command: str) -> str:
    """What a session's record keeps of its command: the program alone. Its arguments may hold
    secrets, and every member of the project (viewers too) sees the record."""
    words = command.split()
    if not words:
        return ""
    program = words[0].rsplit("/", 1)[-1][:60]
    return program + (" …" if len(words) > 1 else "")
