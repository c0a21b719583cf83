"""The MediaPipe Hands scorer: its definition on MediaPipe's result objects, the real bundled model offline, errors."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import cslg.scorers
from cslg.scorers import MissingModelError
from cslg.scorers.hands import hands_score


def _handedness(scores: list[float]) -> list:
    """A ``multi_handedness`` list: MediaPipe's own ClassificationList protos when it is installed, else objects of
    the same structure (``.classification[0].score``)."""
    try:
        from mediapipe.framework.formats import classification_pb2
    except ImportError:
        return [SimpleNamespace(classification=[SimpleNamespace(score=s, label="Left", index=0)]) for s in scores]
    out = []
    for i, s in enumerate(scores):
        hand = classification_pb2.ClassificationList()
        hand.classification.add(index=i % 2, score=s, label=("Left", "Right")[i % 2])
        out.append(hand)
    return out


def test_definition_mean_handedness_confidence_and_count():
    two = hands_score(SimpleNamespace(multi_handedness=_handedness([0.9, 0.6]), multi_hand_landmarks=[1, 2]))
    assert two["hands"] == pytest.approx((0.9 + 0.6) / 2)
    assert two["hands_count"] == 2.0
    one = hands_score(SimpleNamespace(multi_handedness=_handedness([0.8])))
    assert one == {"hands": pytest.approx(0.8), "hands_count": 1.0}
    # MediaPipe reports no hand as None
    assert hands_score(SimpleNamespace(multi_handedness=None)) == {"hands": 0.0, "hands_count": 0.0}


def test_missing_mediapipe_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe raises ImportError
    with pytest.raises(MissingModelError) as e:
        cslg.scorers.get("hands")
    assert 'pip install "cslg[hands]"' in str(e.value) and "\n" not in str(e.value)


def test_bad_options():
    with pytest.raises(ValueError, match="--hands-model"):
        cslg.scorers.get("hands", model="/no/such/hand_model.tflite")
    with pytest.raises(ValueError, match="max_num_hands"):
        cslg.scorers.get("hands", max_num_hands=0)
    with pytest.raises(ValueError, match="min_detection_confidence"):
        cslg.scorers.get("hands", min_detection_confidence=1.5)


def test_real_bundled_model_offline(tmp_path):
    pytest.importorskip("mediapipe", reason='mediapipe 0.10.21 is the optional extra cslg[hands]')
    scorer = cslg.scorers.get("hands", model=str(cslg.scorers.scorer_class("hands").save_tiny(tmp_path)))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), Image.new("L", (48, 48), 128)]
    rows = scorer.details(images)
    assert scorer.score(images) == [r["hands"] for r in rows]
    for row in rows:  # noise and a flat grey image hold no hand: score 0 and count 0, as the definition says
        assert row == {"hands": 0.0, "hands_count": 0.0}
