"""Faults a user meets: concurrent shards, a second runner of a shard, crashes mid-write, edited prompt files,
shared folders. Each case: the exact message or the correct resumed result, and no data lost."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import threading

import pytest

from cslg.families import adapter_for
from cslg.grid import ImageSettings, enumerate_groups, merge_manifests, run_grid
from cslg.methods import CFG, NoGuidance
from cslg.io import append_jsonl, atomic_write_text, file_lock, read_jsonl, remove_stale_temps
from cslg.prompts import GenerationPrompt

from ..helpers import tiny

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
