"""The cslg command: subcommands, help without torch, a grid end to end, vocabularies."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cslg.cli import main

from ..helpers import ROOT


def _cslg(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cslg", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_command_help(capsys):
    done = _cslg("--help")
    assert done.returncode == 0, done.stderr
    for command in ("capture", "analyse", "grid", "eval", "inspect", "paper"):
        assert re.search(rf"\n\s+{command}\s", done.stdout), command
    with pytest.raises(SystemExit) as exit_:  # the same entry point in-process (no second interpreter start)
        main(["grid", "--help"])
    assert exit_.value.code == 0 and "--cslg-scales" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown command 'paint'"):
        main(["paint"])


def test_command_grid_end_to_end(tmp_path):
    out = tmp_path / "run"
    done = _cslg("grid", "--model", "tiny-sd3", "--limit", "1", "--seeds", "0", "--steps", "2", "--height", "32",
                 "--width", "32", "--max-sequence-length", "32", "--methods", "none", "cfg", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in records) == ["cfg", "none"]
    assert all((out / r["image"]).is_file() and r["model"] == "tiny-sd3" and r["seed"] == 0 for r in records)
    assert all(r["params"]["steps"] == 2 and r["params"]["height"] == 32 for r in records)
    assert len(list((out / "contact_sheets").glob("*.png"))) == 1
    assert f"run folder: {out}" in done.stdout


def test_option_vocabularies_match_the_implementations():
    """``cslg.options`` lists what the heavy modules implement (the parsers read it without importing them)."""
    from cslg.evaluation.ocr import ENGINES
    from cslg.families import ADAPTERS
    from cslg.options import OCR_ENGINES, TINY_PRESETS

    assert OCR_ENGINES == tuple(ENGINES)
    assert TINY_PRESETS == tuple(p for cls in ADAPTERS for p in cls.tiny_presets)


def test_help_imports_no_torch():
    code = ("import sys, FLUX_final_experiments, SD3_LayerExperiment_pairwise, visualize, eval; "
            "import cslg.cli; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
