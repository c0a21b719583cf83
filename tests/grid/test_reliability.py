"""Faults a user meets: concurrent shards, a second runner of a shard, crashes mid-write, edited prompt files,
shared folders. Each case: the exact message or the correct resumed result, and no data lost."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import subprocess
import sys
import stat
import threading

import numpy as np
import pytest
from PIL import Image

from cslg.families import adapter_for
from cslg.grid import ImageSettings, enumerate_groups, merge_manifests, run_grid
from cslg.methods import CFG, NoGuidance
from cslg.io import append_jsonl, atomic_write_text, file_lock, read_jsonl, remove_stale_temps
from cslg.prompts import GenerationPrompt

from ..helpers import ROOT, tiny

SETTINGS = ImageSettings(steps=2, height=32, width=32, max_sequence_length=32)


def _groups(prompts):
    methods = [NoGuidance(), CFG(4.0)]
    return enumerate_groups(prompts, [0], methods)


PROMPTS = [GenerationPrompt("a mug that says 'HI'", ("HI",)), GenerationPrompt("a wall")]


def test_second_runner_of_a_shard_is_refused(tmp_path):
    adapter = adapter_for(tiny("tiny-sd3"))
    with file_lock(tmp_path / "manifests" / ".shard-000-of-001.lock"):  # as a live runner holds it
        with pytest.raises(ValueError, match=r"locked by another process running shard 0/1 of this folder"):
            run_grid(adapter, _groups(PROMPTS), SETTINGS, tmp_path, "tiny-sd3", progress=False)
    run_grid(adapter, _groups(PROMPTS), SETTINGS, tmp_path, "tiny-sd3", progress=False)  # released: runs
    assert len(list(read_jsonl(tmp_path / "manifest.jsonl"))) == 4


def _hold_lock(path, ready, release):
    with file_lock(path):
        ready.set()
        release.wait(30)


def test_a_dead_runner_leaves_no_lock(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    lock = tmp_path / "manifests" / ".shard-000-of-001.lock"
    holder = ctx.Process(target=_hold_lock, args=(lock, ready, release))
    holder.start()
    assert ready.wait(30)
    with pytest.raises(Exception, match="locked"):
        with file_lock(lock, wait=False):
            pass
    holder.kill()  # kill -9: the kernel drops its lock
    holder.join()
    with file_lock(lock, wait=False):
        pass


def test_merges_of_concurrent_shards_lose_no_row(tmp_path):
    """Two shards appending and merging at the same time: the merged manifest always holds every row written."""
    manifests = tmp_path / "manifests"

    def shard(i):
        for k in range(40):
            append_jsonl(manifests / f"shard-{i:03d}-of-002.jsonl",
                         {"image": f"images/{i}_{k}.png", "prompt": "p", "method": "none"})
            merge_manifests(tmp_path)

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(read_jsonl(tmp_path / "manifest.jsonl"))) == 80


def test_merge_waits_for_a_merge_in_progress(tmp_path):
    """The read-all-shards-then-write of one merge is never interleaved with another's."""
    append_jsonl(tmp_path / "manifests" / "shard-000-of-001.jsonl", {"image": "a.png", "prompt": "p", "method": "none"})
    done = threading.Event()
    with file_lock(tmp_path / "manifests" / ".merge.lock"):  # another shard is merging
        worker = threading.Thread(target=lambda: (merge_manifests(tmp_path), done.set()))
        worker.start()
        assert not done.wait(0.5), "merge did not wait for the merge in progress"
    worker.join(10)
    assert done.is_set() and len(list(read_jsonl(tmp_path / "manifest.jsonl"))) == 1


def test_truncated_image_and_stale_temps_are_repaired_on_resume(tmp_path):
    adapter = adapter_for(tiny("tiny-sd3"))
    groups = _groups(PROMPTS)
    run_grid(adapter, groups, SETTINGS, tmp_path, "tiny-sd3", progress=False)
    image = tmp_path / groups[0][1].image
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 3])  # a crash mid-write of an older, non-atomic writer
    stale = image.parent / f".{image.name}.999999.abcd.tmp.png"  # a crashed writer's temp file (pid 999999 is gone)
    stale.write_bytes(good)
    live = image.parent / f".{image.name}.{os.getpid()}.abcd.tmp.png"  # a live writer's: kept
    live.write_bytes(good)
    run_grid(adapter, groups, SETTINGS, tmp_path, "tiny-sd3", progress=False)
    assert image.read_bytes() == good  # made again, deterministically equal
    assert not stale.exists() and live.exists()


def test_edited_expected_text_reaches_the_manifest_on_resume(tmp_path):
    adapter = adapter_for(tiny("tiny-sd3"))
    run_grid(adapter, _groups(PROMPTS), SETTINGS, tmp_path, "tiny-sd3", progress=False)
    edited = [GenerationPrompt("a mug that says 'HI'", ("HI", "MUG")), PROMPTS[1]]
    run_grid(adapter, _groups(edited), SETTINGS, tmp_path, "tiny-sd3", progress=False)
    rows = [r for _, r in read_jsonl(tmp_path / "manifest.jsonl")]
    assert len(rows) == 4
    assert [r["expected_text"] for r in rows if r["prompt"] == edited[0].prompt] == [["HI", "MUG"]] * 2
    assert all(set(r["versions"]) >= {"cslg", "torch", "diffusers", "transformers"} for r in rows)


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        path = atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664  # group-writable as the umask says, not mkstemp's 0600


def test_remove_stale_temps_counts(tmp_path):
    (tmp_path / ".a.png.999998.x.tmp.png").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".b.json.999997.y.tmp.json").write_text("x")
    (tmp_path / "keep.png").write_text("x")
    assert remove_stale_temps(tmp_path) == 2 and (tmp_path / "keep.png").exists()


def test_a_failed_append_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / "manifest.jsonl"
    append_jsonl(path, {"image": "a.png"})
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        append_jsonl(path, {"image": "b.png", "prompt": "x" * 1000})
    assert path.read_bytes() == before  # all or nothing


def test_a_torn_manifest_line_is_repaired_and_the_row_written_again(tmp_path):
    adapter = adapter_for(tiny("tiny-sd3"))
    run_grid(adapter, _groups(PROMPTS), SETTINGS, tmp_path, "tiny-sd3", progress=False)
    shard = tmp_path / "manifests" / "shard-000-of-001.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:-1]) + lines[-1][:25])  # a crash in the middle of the last append
    with pytest.raises(ValueError, match="line 4 is not valid JSON"):
        list(read_jsonl(shard))  # a reader that is told nothing refuses it
    run_grid(adapter, _groups(PROMPTS), SETTINGS, tmp_path, "tiny-sd3", progress=False)  # resumes, no error
    rows = [r for _, r in read_jsonl(shard)]
    assert len(rows) == 4 and len({r["image"] for r in rows}) == 4
    assert len(list(read_jsonl(tmp_path / "manifest.jsonl"))) == 4


def test_the_manifest_holds_exactly_the_current_grid(tmp_path, capsys):
    adapter = adapter_for(tiny("tiny-sd3"))
    run_grid(adapter, _groups(PROMPTS), SETTINGS, tmp_path, "tiny-sd3", progress=False)
    run_grid(adapter, _groups(PROMPTS[:1]), SETTINGS, tmp_path, "tiny-sd3", progress=False)  # a shrunken prompt file
    records = [r for _, r in read_jsonl(tmp_path / "manifest.jsonl")]
    assert {r["prompt"] for r in records} == {PROMPTS[0].prompt} and len(records) == 2
    assert "2 image(s)" in capsys.readouterr().out  # said, and kept in the shard manifest
    assert len(list(read_jsonl(tmp_path / "manifests" / "shard-000-of-001.jsonl"))) == 4


def test_batched_grid_equals_one_image_at_a_time(tmp_path):
    adapter = adapter_for(tiny("tiny-sd3"))
    methods = [NoGuidance(), CFG(4.0)]
    groups = enumerate_groups(PROMPTS, [0, 3], methods)
    run_grid(adapter, groups, SETTINGS, tmp_path / "one", "tiny-sd3", progress=False)
    run_grid(adapter, groups, SETTINGS, tmp_path / "four", "tiny-sd3", progress=False, batch_size=4)
    for _, record in read_jsonl(tmp_path / "one" / "manifest.jsonl"):
        a = np.asarray(Image.open(tmp_path / "one" / record["image"]), dtype=float)
        b = np.asarray(Image.open(tmp_path / "four" / record["image"]), dtype=float)
        assert np.abs(a - b).max() <= 1  # the same image, up to float noise in the batched matmuls


def test_a_file_size_limit_ends_in_one_line_and_the_rerun_resumes(tmp_path):
    pytest.importorskip("resource")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": "a mug that says 'HI'", "expected_text": ["HI"]}]))
    cmd = [sys.executable, "-m", "cslg", "grid", "--model", "tiny-sd3", "--prompts", str(prompts), "--steps", "2",
           "--height", "32", "--width", "32", "--max-sequence-length", "32", "--methods", "none", "cfg",
           "--cfg-scales", "4", "--out", str(tmp_path / "run")]

    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))  # images (3 KB) fit, a contact sheet (14 KB) not

    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: File too large: ") and "contact_sheets" in last and "run the same command" in last
    assert len(list((tmp_path / "run" / "images").rglob("*.png"))) == 2
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(read_jsonl(tmp_path / "run" / "manifest.jsonl"))) == 2
