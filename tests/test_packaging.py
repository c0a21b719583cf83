"""What users install: the wheel holds every package and the prompt files, and its `cslg` command runs outside a
clone with the right exit status (0 after every successful command, 1 with one line after a bad input)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from .helpers import ROOT

SMALL = ["--steps", "2", "--height", "32", "--width", "32", "--max-sequence-length", "32"]


def test_every_package_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cslg").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (its dependencies seen through a .pth file)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy of the checkout's files, so the build leaves nothing behind in it
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp.glob("cslg-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    return venv / "bin" / "cslg"


def _cslg(cslg: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(cslg), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_installed_command_outside_a_clone(installed, tmp_path):
    done = _cslg(installed, tmp_path, "--version")
    assert done.returncode == 0 and done.stdout.strip().startswith("cslg ")
    code = "import cslg, sys; print(cslg.__file__)"
    where = subprocess.run([str(installed.parent / "python"), "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert str(ROOT) not in where.stdout, "the test must run the wheel, not the clone"
    # capture && analyse && grid && eval, each with the toolkit's default prompt files (none in this folder)
    done = _cslg(installed, tmp_path, "capture", "--model", "tiny-sd3", "--pairs", "2", *SMALL, "--out", "cap.safetensors")
    assert done.returncode == 0, done.stderr[-2000:]
    done = _cslg(installed, tmp_path, "analyse", "cap.safetensors", "--out", "ana", "--dpi", "40", "--top-k", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    done = _cslg(installed, tmp_path, "grid", "--model", "tiny-sd3", "--limit", "1", "--methods", "none", "cslg",
                 "--layers-from", "ana/layers.json", *SMALL, "--out", "run")
    assert done.returncode == 0 and "score it with: cslg eval --run run" in done.stdout, done.stderr[-2000:]
    assert len((tmp_path / "run" / "manifest.jsonl").read_text().splitlines()) == 2
    done = _cslg(installed, tmp_path, "eval", "--run", "run", "--bootstrap", "20")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "EvalResult" not in done.stdout + done.stderr and (tmp_path / "run" / "eval" / "summary.csv").is_file()
    done = _cslg(installed, tmp_path, "inspect", "cap.safetensors")
    assert done.returncode == 0 and "cosine" in done.stdout
    # a bad input: exit status 1 and one line, before any model loads
    done = _cslg(installed, tmp_path, "grid", "--model", "tiny-sd3", "--cfg-scales", "-1", "--out", "run2")
    assert done.returncode == 1 and done.stderr.strip() == "--cfg-scales: -1.0 is not a finite number at least 0"
    done = _cslg(installed, tmp_path, "paint")
    assert done.returncode == 1 and "unknown command 'paint'" in done.stderr


def test_prompt_files_ship_in_the_wheel(installed):
    site = next((installed.parents[1] / "lib").glob("python*/site-packages"))
    shipped = sorted(p.name for p in (site / "cslg" / "prompt_datasets").glob("*.json"))
    assert shipped == sorted(p.name for p in (ROOT / "prompt_datasets").glob("*.json"))
    assert json.loads((site / "cslg" / "prompt_datasets" / "text_eval_prompts.json").read_text())
