"""The Makefile's install target: which Python the environment it uses holds, checked before anything runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make_install(venv: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-C", str(ROOT), "install", f"PYTHON={sys.executable}", f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def fake_venv(tmp_path: Path, python_script: str) -> Path:
    """An environment whose ``bin/python`` is a shell script, installed (its stamp newer than the Makefile)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\n" + python_script + "\n")
    python.chmod(0o755)
    (venv / ".installed").touch()
    return venv


def test_a_venv_of_another_python_is_refused_with_the_fix(tmp_path):
    """`make demo PYTHON=python3.13` beside a .venv made by 3.11 used the 3.11 one without a word."""
    other = (3, 9) if sys.version_info[:2] != (3, 9) else (3, 8)
    venv = fake_venv(tmp_path, f"echo {other[0]}.{other[1]}")
    before = sorted(p.name for p in venv.rglob("*"))
    result = make_install(venv)
    assert result.returncode == 2, result.stdout + result.stderr
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"{venv} holds Python {other[0]}.{other[1]}, but PYTHON={sys.executable} is Python {want}" in result.stderr
    assert f"rm -rf {venv}" in result.stderr
    assert f"VENV=.venv{want.replace('.', '')}" in result.stderr
    assert "pip" not in result.stdout  # nothing installed, nothing made
    assert sorted(p.name for p in venv.rglob("*")) == before


def test_a_venv_whose_python_does_not_run_is_refused(tmp_path):
    """A .venv whose base Python was removed (e.g. a pyenv version uninstalled)."""
    venv = fake_venv(tmp_path, "exit 127")
    result = make_install(venv)
    assert result.returncode == 2
    assert f"{venv} holds Python none (its python does not run)" in result.stderr


def test_a_venv_of_the_same_python_is_used_as_it_is(tmp_path):
    """The check refuses nothing that works: an installed environment of the same Python needs no step."""
    venv = fake_venv(tmp_path, f'exec {sys.executable} "$@"')
    result = make_install(venv)
    assert result.returncode == 0, result.stderr
    assert "pip" not in result.stdout and result.stderr == ""
