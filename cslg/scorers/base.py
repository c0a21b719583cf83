"""The scorer interface: per-image ``Scorer`` and set-level ``SetScorer``, the one-line missing-model error."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..io import rgb

T = TypeVar("T")


class MissingModelError(RuntimeError):
    """A scorer's model cannot be loaded (offline, gated, a typo): the message is one line."""


class Scorer:
    """A per-image measure: ``score(images, prompts) -> list[float]``, one value per image (higher is better unless
    ``higher_is_better`` is False). ``details`` gives every column a scorer reports (``columns``; the first is the
    score itself), e.g. the hand scorer's detection count.

    Subclasses set the class attributes, implement ``load`` (build ``self`` 's models from ``self.model``) and
    ``score_batch`` (one batch of RGB images and their prompts -> a list of floats, or of dicts over ``columns``),
    and ``save_tiny``."""

    name: ClassVar[str]
    default_model: ClassVar[str]
    citation: ClassVar[str] = ""
    columns: ClassVar[tuple[str, ...]] = ()
    higher_is_better: ClassVar[bool] = True
    needs_prompts: ClassVar[bool] = True

    def __init__(self, model: str | os.PathLike | None = None, device: Any = None, dtype: Any = None,
                 batch_size: int = 16):
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"{self.name}: model must be a Hub id or a local path, not {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be a positive integer, not {batch_size!r}")
        import torch

        self.model = str(model) if model is not None else self.default_model
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype if dtype is not None else torch.float32
        self.batch_size = batch_size
        self.load()

    @property
    def column_names(self) -> tuple[str, ...]:
        return self.columns or (self.name,)

    def load(self) -> None:
        raise NotImplementedError

    def score_batch(self, images: list, prompts: list[str]) -> list[float] | list[dict[str, float]]:
        raise NotImplementedError

    @classmethod
    def save_tiny(cls, folder: str | os.PathLike, seed: int = 0) -> Path:
        """Write a small randomly initialised model of the real class(es) to ``folder``; returns the ``model`` path."""
        raise NotImplementedError

    def details(self, images: Sequence, prompts: Sequence[str] | None = None) -> list[dict[str, float]]:
        """Every column for every image, in batches of ``batch_size``."""
        images, prompts = self._checked(images, prompts)
        out: list[dict[str, float]] = []
        for start in range(0, len(images), self.batch_size):
            batch = self.score_batch(images[start:start + self.batch_size], prompts[start:start + self.batch_size])
            out.extend(v if isinstance(v, dict) else {self.column_names[0]: float(v)} for v in batch)
        return out

    def score(self, images: Sequence, prompts: Sequence[str] | None = None) -> list[float]:
        """One value per image (the first column)."""
        return [d[self.column_names[0]] for d in self.details(images, prompts)]

    def _checked(self, images: Sequence, prompts: Sequence[str] | None) -> tuple[list, list[str]]:
        from PIL import Image

        if isinstance(images, Image.Image) or not isinstance(images, Sequence):
            raise TypeError(f"{self.name}: images must be a list of PIL images")
        bad = [type(i).__name__ for i in images if not isinstance(i, Image.Image)]
        if bad:
            raise TypeError(f"{self.name}: images must be PIL images, got {bad[0]}")
        if prompts is None:
            if self.needs_prompts:
                raise ValueError(f"{self.name}: needs one prompt per image")
            prompts = [""] * len(images)
        if isinstance(prompts, str) or any(not isinstance(p, str) for p in prompts):
            raise TypeError(f"{self.name}: prompts must be a list of strings")
        if len(prompts) != len(images):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts")
        return [rgb(i) for i in images], list(prompts)

    def load_pretrained(self, loader: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``loader(self.model, ...)`` (a ``from_pretrained``), its failure turned into ``MissingModelError``."""
        try:
            return loader(self.model, *args, **kwargs)
        except (OSError, ValueError) as e:
            raise self.missing(e) from None

    def missing(self, error: BaseException | str) -> MissingModelError:
        """The one-line error for a model that cannot be loaded."""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        local = Path(self.model).exists()
        how = ("the folder is not a complete save_pretrained copy" if local else
               f"download it where there is network (`hf download {self.model}`) and pass the folder")
        return MissingModelError(f"{self.name}: cannot load model {self.model!r} ({reason[:160]}); {how} "
                                 f"with --{self.name}-model PATH")


class SetScorer(Scorer):
    """A set-level measure (FID, KID): ``score_set(images, reference) -> dict`` of the set's values, where
    ``images`` is a sequence of PIL images (the evaluation passes one that opens each image when indexed or sliced:
    read it in slices, do not hold it all) and ``reference`` a list of PIL images or a folder of images."""

    needs_prompts: ClassVar[bool] = False

    def score_set(self, images: Sequence, reference: Sequence | str | os.PathLike) -> dict[str, float]:
        raise NotImplementedError

    def score_batch(self, images: list, prompts: list[str]) -> list[float]:
        raise TypeError(f"{self.name} is a set-level measure: use score_set(images, reference)")

