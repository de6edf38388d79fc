"""The Model Zoo's code and config format, checked in the test run (its CI runs the same tools).

black and isort at line length 120 (black with --skip-magic-trailing-comma, settings in
pyproject.toml), flake8 with the zoo's rule set (setup.cfg), configs as 4-space-indented JSON,
and no trailing whitespace in committed text files (the zoo's pre-commit hooks).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ["bundle", "scripts", "tests"]


def _tool(module: str, *args: str) -> subprocess.CompletedProcess:
    if shutil.which(module) is None and not _importable(module):
        pytest.skip(f"{module} is not installed (pip install -e '.[format]')")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_black():
    result = _tool("black", "--check", "--quiet", *CODE)
    assert result.returncode == 0, f"run `black {' '.join(CODE)}`:\n{result.stderr}"


def test_isort():
    result = _tool("isort", "--check-only", "--quiet", *CODE)
    assert result.returncode == 0, f"run `isort {' '.join(CODE)}`:\n{result.stdout}{result.stderr}"


def test_flake8():
    result = _tool("flake8", *CODE)
    assert result.returncode == 0, result.stdout


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.stdout.split()]


def test_configs_are_four_space_json():
    for path in _tracked("configs/*.json", "configs/**/*.json"):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4, ensure_ascii=False) + "\n", path


def test_no_trailing_whitespace_in_committed_text():
    bad = []
    for path in _tracked("*.md", "*.json", "*.yml", "*.cfg", "*.toml", "*.log", "*.csv", "*.py", "*.sh"):
        if not path.is_file():
            continue
        try:
            lines = path.read_text().split("\n")
        except UnicodeDecodeError:
            continue
        if any(line != line.rstrip() for line in lines):
            bad.append(str(path.relative_to(ROOT)))
    assert not bad, f"trailing whitespace in {bad[:10]}"
