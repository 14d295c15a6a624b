from dataclasses import asdict, dataclass

import yaml

from safeyaml import BoundedLoader

_INVALID = object()


class TooLarge(Exception):
    """A file bigger than the reader's limit (checked before it is read)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"is {size // 1024} KiB")
        self.size = size


@dataclass(frozen=True)
class StackError:
    """One problem in a stack or package file: which file, which field, and why."""

    file: str
    field: str
    message: str
    severity: str = "error"  # or "warning": shown, but the file is used

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"


class Problems:
    """Collects StackErrors for one file while its fields are checked."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[StackError] = []
        self.warnings: list[StackError] = []

    def add(self, field: str, message: str) -> None:
        self.errors.append(StackError(self.file, field, message))

    def warn(self, field: str, message: str) -> None:
        self.warnings.append(StackError(self.file, field, message, "warning"))

    def load_yaml(self, text: str | bytes) -> object:
        """The parsed document, or _INVALID after recording where the YAML is broken."""
        try:
            return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 — a SafeLoader
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            problem = getattr(e, "problem", None) or str(e)
            if "alias" in (getattr(e, "context", None) or "") and _bare_star(text, mark):
                problem += "; a lone * must be quoted: '*'"
            self.add(f"line {mark.line + 1}" if mark else "", f"is not valid YAML ({problem})")
            return _INVALID

    def mapping(self, value: object, field: str, allowed: set[str], required: set[str] = frozenset(), lenient: bool = False) -> bool:
        """Check that `value` is a mapping with only `allowed` keys and all `required` ones. Lenient:
        other keys are a warning (Diploi's format grows; a file written for it still loads)."""
        if value is _INVALID:
            return False
        if not isinstance(value, dict):
            self.add(field, f"must be a mapping, not {_kind(value)}")
            return False
        for key in value:
            if key not in allowed:
                if lenient:
                    self.warn(_join(field, str(key)), f"is not read by this platform and is ignored (known: {', '.join(sorted(allowed))})")
                else:
                    self.add(_join(field, str(key)), f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for key in sorted(required):
            if key not in value or value[key] in (None, ""):
                self.add(_join(field, key), "is required")
        return True

    def string(self, value: object, field: str) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.add(field, f"must be a string, not {_kind(value)}")
            return None
        return str(value)


def _bare_star(text: str | bytes, mark: object) -> bool:
    """Whether the line YAML stopped at holds an unquoted `*` item (Diploi's docs show `- *`)."""
    if mark is None:
        return False
    lines = (text.decode(errors="replace") if isinstance(text, bytes) else text).splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    return line.strip() in ("- *", "*") or line.rstrip().endswith(": *")


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _kind(value: object) -> str:
    if value is None:
        return "empty"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
