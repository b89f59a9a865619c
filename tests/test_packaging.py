"""The project builds without packaging warnings and its wheel carries the preset files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_builds_without_warnings_and_ships_the_presets(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__",
                                                                "*-data", "tests"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                             str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("pie-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert sum(name.startswith("rules/presets/") and name.endswith(".xmp") for name in names) == 15
    assert "rules/example_presets/yesteryear.lrtemplate" in names
    assert not any("__pycache__" in name or name.startswith("tests/") for name in names)
