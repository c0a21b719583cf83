"""MediaPipe Hands score: whether a hand was detected, and how confidently.

Definition (upstream CSLG ``eval/eval_hands.py``): MediaPipe's legacy Hands solution (Zhang et al. 2020,
"MediaPipe Hands: On-device Real-time Hand Tracking", arXiv:2006.10214) runs on each image with
``static_image_mode=True, max_num_hands=2, min_detection_confidence=0.7``; the score is the mean handedness
confidence over the detected hands,

    hands = mean_i  multi_handedness[i].classification[0].score        (0 when no hand is detected),

and ``hands_count`` is the number of hands detected. The score measures that a hand was *detected*, not that it is
well formed (six fingers can still score high).

MediaPipe 0.10.21 ships the hand landmark models inside its wheel (later 0.10.x releases do not, 1.x dropped
``mp.solutions``), so it runs offline; it needs ``protobuf<5``, hence the optional extra ``cslg[hands]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from .base import MissingModelError, Scorer

INSTALL = 'pip install "cslg[hands]"'
# --hands-model value -> MediaPipe's model_complexity (both models ship in the mediapipe 0.10.21 wheel)
MODELS = {"full": 1, "lite": 0}


def hands_score(result: Any) -> dict[str, float]:
    """The score of one MediaPipe Hands ``process`` result: its mean handedness confidence (0 with no hand) and the
    number of hands."""
    detected = list(result.multi_handedness or [])
    scores = [float(hand.classification[0].score) for hand in detected]
    return {"hands": sum(scores) / len(scores) if scores else 0.0, "hands_count": float(len(scores))}


class Hands(Scorer):
    """Mean MediaPipe handedness confidence of the detected hands (0 when none) and the number of hands."""

    name: ClassVar[str] = "hands"
    default_model: ClassVar[str] = "full"
    citation: ClassVar[str] = "Zhang et al. 2020, MediaPipe Hands (arXiv:2006.10214); upstream CSLG eval/eval_hands.py"
    columns: ClassVar[tuple[str, ...]] = ("hands", "hands_count")
    needs_prompts: ClassVar[bool] = False

    def __init__(self, model: str | os.PathLike | None = None, device: Any = None, dtype: Any = None,
                 batch_size: int = 16, max_num_hands: int = 2, min_detection_confidence: float = 0.7):
        if isinstance(max_num_hands, bool) or not isinstance(max_num_hands, int) or max_num_hands < 1:
            raise ValueError(f"hands: max_num_hands must be a positive integer, not {max_num_hands!r}")
        if not 0.0 <= float(min_detection_confidence) <= 1.0:
            raise ValueError(f"hands: min_detection_confidence must be in [0, 1], not {min_detection_confidence!r}")
        self.max_num_hands = max_num_hands
        self.min_detection_confidence = float(min_detection_confidence)
        super().__init__(model=model, device=device, dtype=dtype, batch_size=batch_size)

    def load(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"hands: --hands-model must be one of {', '.join(MODELS)} (the models bundled in "
                             f"mediapipe 0.10.21), not {self.model!r}")
        try:
            import mediapipe as mp
        except ImportError:
            raise MissingModelError(f"hands: needs mediapipe 0.10.21 (its wheel ships the hand models): "
                                    f"{INSTALL}") from None
        solutions = getattr(mp, "solutions", None)
        if solutions is None:
            raise MissingModelError(f"hands: mediapipe {getattr(mp, '__version__', '?')} has no mp.solutions; "
                                    f"install 0.10.21: {INSTALL}")
        try:
            self.detector = solutions.hands.Hands(static_image_mode=True, max_num_hands=self.max_num_hands,
                                                  model_complexity=MODELS[self.model],
                                                  min_detection_confidence=self.min_detection_confidence)
        except (AttributeError, TypeError, RuntimeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MissingModelError(f"hands: mediapipe cannot build its hand model ({reason[:120]}); it needs "
                                    f"mediapipe 0.10.21 with protobuf<5: {INSTALL}") from None

    def score_batch(self, images: list, prompts: list[str]) -> list[dict[str, float]]:
        import numpy as np

        return [hands_score(self.detector.process(np.asarray(image, dtype=np.uint8))) for image in images]

    @classmethod
    def save_tiny(cls, folder: str | os.PathLike, seed: int = 0) -> Path:
        """MediaPipe's hand models ship inside its wheel and have no randomly initialised form: nothing is written
        and the small bundled ``lite`` model stands in (returns the ``model`` value ``lite``)."""
        return Path("lite")
