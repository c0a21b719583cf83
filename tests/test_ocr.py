"""Real easyocr (offline weights, CPU) on images rendered with matplotlib's DejaVu Sans."""

import numpy as np
import pytest
from PIL import Image

from cslg.metrics import ocr_similarity
from cslg.ocr import EASYOCR_WEIGHTS, EasyOCREngine, get_engine, render_text


@pytest.fixture(scope="module")
def engine():
    return get_engine("easyocr", gpu=False)


@pytest.mark.parametrize("as_input", ["path", "pil", "array"])
def test_reads_rendered_word(engine, tmp_path, as_input):
    image = render_text("HELLO")
    if as_input == "path":
        image.save(tmp_path / "hello.png")
        image = tmp_path / "hello.png"
    elif as_input == "array":
        image = np.asarray(image)
    assert ocr_similarity(engine.read(image), "HELLO") >= 0.8


def test_blank_image_scores_near_zero(engine):
    text = engine.read(Image.new("RGB", (640, 160), "white"))
    assert ocr_similarity(text, "HELLO") <= 0.2


def test_misspelled_rendering_scores_in_between(engine):
    right = ocr_similarity(engine.read(render_text("SWEET TOOTH")), "SWEET TOOTH")
    wrong = ocr_similarity(engine.read(render_text("SWAET TOOTS")), "SWEET TOOTH")
    assert right >= 0.9
    assert 0.4 <= wrong < right


def test_one_reader_per_process(engine):
    assert get_engine("easyocr", gpu=False)._reader is engine._reader


@pytest.mark.parametrize("present", [(), ("english_g2.pth",)])
def test_missing_weights_name_the_folder_and_files(tmp_path, present):
    for name in present:
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError) as info:
        EasyOCREngine(gpu=False, model_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert all(name in message for name in EASYOCR_WEIGHTS)


def test_unknown_engine_lists_choices():
    with pytest.raises(ValueError, match="easyocr"):
        get_engine("tesseract")
