from dataclasses import asdict, dataclass

import yaml

_INVALID = object()


@dataclass(frozen=True)
class StackError:
    """One problem in a stack or package file: which file, which field, and why."""

    file: str
    field: str
    message: str

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

    def add(self, field: str, message: str) -> None:
        self.errors.append(StackError(self.file, field, message))

    def load_yaml(self, text: str | bytes) -> object:
        """The parsed document, or _INVALID after recording where the YAML is broken."""
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            self.add(f"line {mark.line + 1}" if mark else "", f"is not valid YAML ({getattr(e, 'problem', None) or e})")
            return _INVALID

    def mapping(self, value: object, field: str, allowed: set[str], required: set[str] = frozenset()) -> bool:
        """Check that `value` is a mapping with only `allowed` keys and all `required` ones."""
        if value is _INVALID:
            return False
        if not isinstance(value, dict):
            self.add(field, f"must be a mapping, not {_kind(value)}")
            return False
        for key in value:
            if key not in allowed:
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


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _kind(value: object) -> str:
    if value is None:
        return "empty"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
