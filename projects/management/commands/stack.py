"""`manage.py stack check PATH`: validate a project file, a package file or a repository folder offline,
as a repository's own CI can — every problem as `file: field: reason`, exit 1 on errors."""

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandParser

from projects.package import parse_package
from projects.remote import GitPackages
from projects.stackerrors import Problems, StackError, TooLarge
from projects.stackfile import MAX_STACK_BYTES, STACK_FILE, parse_stack
from projects.validators import safe_relative_folder


class Folder:
    """A repository's work tree, read as the parser reads a commit (nothing outside it)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _inside(self, path: str) -> Path | None:
        relative = safe_relative_folder(path)
        if relative is None:
            return None
        full = (self.root / relative).resolve()
        return full if full == self.root or self.root in full.parents else None

    def read(self, path: str, limit: int) -> bytes | None:
        full = self._inside(path)
        if full is None or not full.is_file():
            return None
        if (size := full.stat().st_size) > limit:
            raise TooLarge(size)
        return full.read_bytes()

    def is_folder(self, path: str) -> bool:
        full = self._inside(path)
        return full is not None and full.is_dir()


class Command(BaseCommand):
    help = "Check Diploi project and package files: stack check PATH [--fetch]."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        check = sub.add_parser("check", help="validate a diploi.yaml (project or package) or a repository folder")
        check.add_argument("path", type=Path)
        check.add_argument("--fetch", action="store_true", help="fetch packages named by Git URL (offline otherwise)")

    def handle(self, *args, action: str, path: Path, fetch: bool, **options) -> None:
        problems = check_path(path, GitPackages() if fetch else None)
        errors = [p for p in problems if p.severity == "error"]
        for problem in problems:
            where = f"{problem.file}: {problem.field}" if problem.field else problem.file
            label = "warning: " if problem.severity == "warning" else ""
            self.stdout.write(f"{where}: {label}{problem.message}")
        warnings = len(problems) - len(errors)
        summary = f"{len(errors)} error{'s' * (len(errors) != 1)}, {warnings} warning{'s' * (warnings != 1)}"
        (self.stderr if errors else self.stdout).write(summary)
        if errors:
            sys.exit(1)


def check_path(path: Path, remote: GitPackages | None) -> list[StackError]:
    """Every problem of the file or folder at `path` (errors and warnings)."""
    folder = path if path.is_dir() else path.parent
    file = path / STACK_FILE if path.is_dir() else path
    if not file.is_file():
        return [StackError(str(file), "", "not found")]
    if file.stat().st_size > MAX_STACK_BYTES:
        return [StackError(file.name, "", f"is larger than {MAX_STACK_BYTES // 1024} KiB")]
    text = file.read_bytes()
    data = Problems(file.name).load_yaml(text)
    if isinstance(data, dict) and data.get("type") in ("component", "addon"):
        _, problems = parse_package(text, file.name, source=str(file))
        return problems
    stack, errors = parse_stack(text, Folder(folder), remote)
    return errors if stack is None else stack.warnings
