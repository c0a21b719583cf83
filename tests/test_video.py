"""Videos in run folders: the frame strip and the lossless video next to it, written by the grid for a video family
and read back frame by frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageSequence

import cslg
from cslg.cli import main
from cslg.families import adapter_for
from cslg.grid import ImageSettings, enumerate_groups, run_grid
from cslg.methods import CFG, CSLG
from cslg.prompts import GenerationPrompt
from cslg.video import frame_strip, strip_frames, strip_indices, write_video

from .helpers import tiny

FRAMES = 5
SETTINGS = ImageSettings(steps=1, height=32, width=32, max_sequence_length=32, frames=FRAMES)


def test_strip_indices_keep_first_and_last_evenly_spaced():
    assert strip_indices(5) == [0, 1, 2, 3, 4]
    assert strip_indices(81) == [0, 11, 23, 34, 46, 57, 69, 80]
    assert strip_indices(9, most=3) == [0, 4, 8]


def test_strip_and_video_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)) for _ in range(3)]
    strip = frame_strip(frames, [0, 2])
    assert strip.size == (8, 6)
    assert [np.asarray(f).tolist() for f in strip_frames(strip, 2)] == [np.asarray(frames[i]).tolist() for i in (0, 2)]
    with Image.open(write_video(tmp_path / "v.webp", frames, fps=16)) as video:
        read = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(video)]
    assert len(read) == 3 and all(np.array_equal(a, np.asarray(b)) for a, b in zip(read, frames))  # lossless


def test_grid_writes_videos_strips_and_sheets(tmp_path):
    adapter = adapter_for(tiny("tiny-wan"), frames=FRAMES)
    prompt = GenerationPrompt("a sign that says 'OPEN'", ("OPEN",))
    methods = [CFG(4.0), CSLG(["1"], 2.0, 4.0)]
    manifest = run_grid(adapter, enumerate_groups([prompt], [0], methods), SETTINGS, tmp_path, "tiny-wan",
                        progress=False)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(records) == 2 and all(r["params"]["frames"] == FRAMES for r in records)
    video = cslg.generate(tiny("tiny-wan"), prompt.prompt, methods[1], num_frames=FRAMES, steps=1, height=32,
                          width=32, max_sequence_length=32, progress=False).images[0]
    record = next(r for r in records if r["method"] == "cslg")
    assert record["strip_frames"] == list(range(FRAMES)) and record["video"].endswith(".webp")
    with Image.open(tmp_path / record["video"]) as written:
        assert [np.asarray(f.convert("RGB")).tolist() for f in ImageSequence.Iterator(written)] == \
            [np.asarray(f).tolist() for f in video]
    with Image.open(tmp_path / record["image"]) as strip:
        assert strip.size == (32 * FRAMES, 32)
        assert np.array_equal(np.asarray(strip_frames(strip, FRAMES)[3]), np.asarray(video[3]))
    assert len(list((tmp_path / "contact_sheets").glob("*.png"))) == 1
    before = (tmp_path / record["video"]).stat().st_mtime_ns
    run_grid(adapter, enumerate_groups([prompt], [0], methods), SETTINGS, tmp_path, "tiny-wan", progress=False)
    assert (tmp_path / record["video"]).stat().st_mtime_ns == before, "a resume made a finished video again"


def test_grid_settings_and_adapter_agree_on_frames(tmp_path):
    with pytest.raises(ValueError, match="frames: the image settings give 5, the wan adapter makes 9-frame videos"):
        run_grid(adapter_for(tiny("tiny-wan"), frames=9), [], SETTINGS, tmp_path, "tiny-wan", progress=False)


def test_frames_flag_is_refused_for_image_families(tmp_path):
    with pytest.raises(SystemExit, match="--frames: sd3 models make images, not videos"):
        main(["grid", "--model", "tiny-sd3", "--out", str(tmp_path / "run"), "--frames", "5", "--steps", "1",
              "--height", "32", "--width", "32", "--methods", "cfg"])


class FrameEngine:
    """Reads "OPEN" in a bright frame, nothing in a dark one; counts its reads."""

    name = "frames"

    def __init__(self):
        self.reads = 0

    def read(self, image):
        self.reads += 1
        pixels = np.asarray(image if isinstance(image, Image.Image) else Image.open(image).convert("RGB"))
        return "OPEN" if pixels.mean() > 127 else ""


def test_ocr_reads_a_video_frame_by_frame_and_averages(tmp_path):
    from cslg.evaluation import ocr_images

    frames = [Image.new("RGB", (8, 6), c) for c in ("white", "black", "black")]
    frame_strip(frames, [0, 1, 2]).save(tmp_path / "strip.png")
    record = {"image": "strip.png", "prompt": "a sign that says 'OPEN'", "method": "cfg", "seed": 0,
              "strip_frames": [0, 1, 2], "video": "strip.webp"}
    engine = FrameEngine()
    (row,) = ocr_images([record], tmp_path, tmp_path / "per_image.csv", engine)
    assert engine.reads == 3 and row["ocr_text"] == "OPEN\n\n"
    assert row["exact_match"] == pytest.approx(1 / 3) and not row["error"]
    again = FrameEngine()
    (cached,) = ocr_images([record], tmp_path, tmp_path / "per_image.csv", again)  # from per_image.csv
    assert again.reads == 0 and cached["exact_match"] == pytest.approx(1 / 3)
    (image,) = ocr_images([{**record, "strip_frames": None}], tmp_path, tmp_path / "other.csv", FrameEngine())
    assert image["ocr_text"] == ""  # as one image (mostly dark): the frames found the text
