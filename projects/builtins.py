"""Diploi's official packages, served here by the built-in recipe that does the same job.

A project written for Diploi names its packages by their GitHub URL; those listed below run on the
local runtime with the built-in package of the same kind (no network fetch), which declares the same
parameters as Diploi's package (POSTGRES_USER, …), so env includes keep working. Any other URL is
fetched with git (projects/remote.py)."""

import re

OFFICIAL = re.compile(r"^https://github\.com/diploi/(?P<name>[A-Za-z0-9._-]+?)(?:\.git)?/?$", re.IGNORECASE)
RECIPES = {
    "component-nodejs": "node",
    "component-nextjs": "node",
    "component-react-vite": "react-vite",
    "component-astro": "astro",
    "component-sveltekit": "sveltekit",
    "component-static": "static",
    "component-python": "python",
    "component-fastapi": "fastapi",
    "component-flask": "flask",
    "component-django": "django",
    "addon-postgres": "postgres",
    "addon-redis": "redis",
}


def recipe_for(url: str) -> str | None:
    """The built-in recipe serving Diploi's official package at `url`, if there is one."""
    m = OFFICIAL.match(url)
    return RECIPES.get(m["name"].lower()) if m else None
