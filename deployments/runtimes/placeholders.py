"""The placeholders of a package's commands and exports ({host}, {port.http}, {storage.data}, …),
filled in by each runtime with its own values.

projects/package.py checks a package's placeholders when it is loaded, with its own copy of this
pattern (projects does not import the runtimes); tests/test_it_architecture.py keeps the two equal.
"""

import re
import shlex

PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)\}")


def render(template: str, ctx: dict[str, str], quote: bool = False) -> str:
    """Fill `template`'s placeholders from `ctx`; in commands the values are shell-quoted. Names that
    are not placeholders stay as written (a user's value may hold `{braces}`; packages' own
    templates are checked when they are loaded)."""

    def value(m: re.Match) -> str:
        if m.group(1) not in ctx:
            return m.group(0)
        v = ctx[m.group(1)]
        return shlex.quote(v) if quote else v

    return PLACEHOLDER.sub(value, template)
