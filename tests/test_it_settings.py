import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from diploi.env import envbool, envchoice, envint, envlist


@pytest.mark.parametrize("raw, expected", [("1", True), ("yes", True), ("ON", True), ("0", False), ("false", False), ("", False)])
def test_envbool_reads_the_usual_spellings(monkeypatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("X", raw)
    assert envbool("X", not expected) is expected


def test_envbool_fails_loudly(monkeypatch) -> None:
    monkeypatch.setenv("X", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X='maybe' is not a boolean"):
        envbool("X", False)


def test_envint_checks_type_and_range(monkeypatch) -> None:
    monkeypatch.delenv("X", raising=False)
    assert envint("X", 7) == 7
    monkeypatch.setenv("X", "12")
    assert envint("X", 7, minimum=1, maximum=20) == 12
    monkeypatch.setenv("X", "twelve")
    with pytest.raises(ImproperlyConfigured, match="not an integer"):
        envint("X", 7)
    monkeypatch.setenv("X", "99999")
    with pytest.raises(ImproperlyConfigured, match="above the maximum of 65535"):
        envint("X", 7, maximum=65535)


def test_envchoice_and_envlist(monkeypatch) -> None:
    monkeypatch.setenv("RT", "docker")
    with pytest.raises(ImproperlyConfigured, match="must be one of: local, kubernetes"):
        envchoice("RT", "local", ("local", "kubernetes"))
    monkeypatch.setenv("HOSTS", " a.example, b.example ,")
    assert envlist("HOSTS", []) == ["a.example", "b.example"]


def test_a_bad_setting_stops_the_process_with_its_name(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=Path(__file__).resolve().parent.parent,
        env={"PATH": "/usr/bin:/bin", "DIPLOI_DATA_DIR": str(tmp_path), "DIPLOI_DEBUG": "perhaps"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DIPLOI_DEBUG='perhaps' is not a boolean" in result.stderr


def test_every_setting_is_in_env_example() -> None:
    """`.env.example` lists every variable the settings read (the README promises it)."""
    import re

    from tests.conftest import BASE_DIR

    read = set(re.findall(r'env(?:str|int|bool|list|choice)\("([A-Z_]+)"', (BASE_DIR / "diploi" / "settings.py").read_text()))
    listed = set(re.findall(r"^#?\s*([A-Z_]+)=", (BASE_DIR / ".env.example").read_text(), re.M))
    assert read and sorted(read - listed) == []
