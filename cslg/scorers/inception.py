"""The Inception-v3 features the set-level scorers (``fid``, ``kid``) share: torch-fidelity's
``FeatureExtractorInceptionV3`` (the TensorFlow FID network of 2015-12-05, converted; its 2048-d pool features,
input resized to 299 px as TensorFlow 1.x did), loaded from a local weights file when offline. ``features`` 64, 192
or 768 takes an earlier layer's pooled features instead (quick checks; published FID/KID use 2048)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from .base import MissingModelError, SetScorer

INSTALL = 'pip install "cslg[fid]"'
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FEATURES = ("64", "192", "768", "2048")  # torch-fidelity's pool features by width; FID/KID as published use 2048


def _fidelity():
    try:
        from torch_fidelity import feature_extractor_inceptionv3
    except ImportError:
        raise MissingModelError(f"FID/KID need torch-fidelity and torchmetrics: {INSTALL}") from None
    return feature_extractor_inceptionv3


def folder_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"reference folder {str(path)!r} does not exist or is not a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"reference folder {str(path)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


class InceptionSetScorer(SetScorer):
    """A set-level measure on Inception-v3 pool features; ``model`` is the weights file (default: torch-fidelity's
    release file, from the torch hub cache or downloaded). Reference-folder features are kept per folder content,
    so scoring several methods against one folder extracts its features once."""

    default_model: ClassVar[str] = WEIGHTS_FILE
    higher_is_better: ClassVar[bool] = False

    def __init__(self, model: str | os.PathLike | None = None, device: Any = None, dtype: Any = None,
                 batch_size: int = 16, features: int | str = 2048):
        if str(features) not in FEATURES:
            raise ValueError(f"{self.name}: features must be one of {', '.join(FEATURES)}, not {features!r}")
        self.feature_width = str(features)
        super().__init__(model=model, device=device, dtype=dtype, batch_size=batch_size)

    def load(self) -> None:
        module = _fidelity()
        weights = None if self.model == self.default_model else self.model
        if weights is not None and not Path(weights).is_file():
            raise self.missing("no such file")
        try:
            self.extractor = module.FeatureExtractorInceptionV3("inception-v3-compat", [self.feature_width], weights)
        except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as e:
            raise self.missing(e) from None
        self.extractor.to(self.device)
        self._reference: dict[tuple, Any] = {}

    def missing(self, error: BaseException | str) -> MissingModelError:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return MissingModelError(f"{self.name}: cannot load the Inception weights {self.model!r} ({reason[:160]}); "
                                 f"download {_fidelity().URL_INCEPTION_V3} where there is network and pass the file "
                                 f"with --{self.name}-model PATH")

    def features(self, images: Sequence) -> Any:
        """The (N, features) float32 CPU features of a list of PIL images (batches of equal-size images)."""
        import numpy as np
        import torch

        images, _ = self._checked(images, None)
        out = []
        start = 0
        while start < len(images):
            size = images[start].size
            stop = start
            while stop < len(images) and stop - start < self.batch_size and images[stop].size == size:
                stop += 1
            batch = np.stack([np.asarray(i, dtype=np.uint8) for i in images[start:stop]])
            with torch.no_grad():
                out.append(self.extractor(torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device))[0].cpu())
            start = stop
        return torch.cat(out)

    def reference_features(self, reference: Sequence | str | os.PathLike) -> Any:
        """Features of the reference: a list of PIL images, or a folder of images (kept per folder content)."""
        if not isinstance(reference, (str, os.PathLike)):
            return self.features(reference)
        from PIL import Image

        files = folder_images(reference)
        key = tuple((str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        if key not in self._reference:
            images = []
            for f in files:
                with Image.open(f) as image:
                    images.append(image.copy())  # converted to RGB by features()
            self._reference = {key: self.features(images)}
        return self._reference[key]

    def set_features(self, images: Sequence, reference: Sequence | str | os.PathLike,
                     least: int) -> tuple[Any, Any]:
        """The features of ``images`` and of ``reference``, each set checked to hold at least ``least`` images."""
        generated = self.features(images)
        real = self.reference_features(reference)
        for what, feats in (("images", generated), ("reference", real)):
            if len(feats) < least:
                raise ValueError(f"{self.name}: needs at least {least} {what}, got {len(feats)}")
        return generated, real

    @classmethod
    def save_tiny(cls, folder: str | os.PathLike, seed: int = 0) -> Path:
        """torch-fidelity's ``FeatureExtractorInceptionV3`` (the real network; it has one size) with random weights,
        saved as a state-dict file in ``folder``; returns the file."""
        import torch

        module = _fidelity()

        class RandomInception(module.FeatureExtractorInceptionV3):
            def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random initialisation
                return None

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        empty = folder / "empty.pth"
        torch.save({}, empty)
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        network = RandomInception("inception-v3-compat", ["2048"], str(empty))
        empty.unlink()
        # Random convolutions shrink the signal layer by layer; batch-norm statistics measured on random images keep
        # every layer's activations near unit scale, so the random features differ between images as real ones do.
        for layer in network.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.reset_running_stats()
                layer.momentum = None
        network.train()
        with torch.no_grad():
            network(torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=generator))
        network.eval()
        path = folder / "tiny-inception.pth"
        torch.save(network.state_dict(), path)
        return path
