"""VQAScore and the VLM judge on a tiny random Qwen2-VL: VQAScore equals the softmax of the model's own logits at
the answer position; the judge's answers equal the model's own greedy generation; the score parser on many answers."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from PIL import Image

import cslg.scorers
from cslg.scorers import MissingModelError
from cslg.scorers.vlm import build_tiny_vlm
from cslg.scorers.vlm_judge import QUESTIONS, parse_score
from cslg.scorers.vqascore import QUESTION


@pytest.fixture(scope="module", params=["qwen2-vl", "qwen2.5-vl", "internvl"])
def folder(request, tmp_path_factory):
    """The scorers' tiny model (Qwen2-VL, ``save_tiny``), one of the default model's class (Qwen2.5-VL) and one of
    upstream's judge's (InternVL3)."""
    if request.param == "qwen2-vl":
        return cslg.scorers.scorer_class("vqascore").save_tiny(tmp_path_factory.mktemp("tiny-vlm"))
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"), family=request.param)


@pytest.fixture(scope="module")
def reference(folder):
    """The tiny model and processor loaded by their own classes, apart from the scorers."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    name = config.architectures[0]
    assert name in ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
                    "InternVLForConditionalGeneration")
    processor = getattr(transformers, name.replace("ForConditionalGeneration", "Processor")).from_pretrained(folder)
    return getattr(transformers, name).from_pretrained(folder).eval(), processor


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((32, 32), (64, 48), (56, 56))]


PROMPTS = ["a red book and a gold clock", "a cat", "a hand holding a cup"]


def _inputs(processor, image, question: str):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[image], return_tensors="pt")


def test_vqascore_is_the_softmax_of_yes_at_the_answer_position(folder, reference, images):
    model, processor = reference
    scorer = cslg.scorers.get("vqascore", model=str(folder), device="cpu", batch_size=2)  # a padded batch and one
    values = scorer.score(images, PROMPTS)
    yes = processor.tokenizer.convert_tokens_to_ids("Yes")
    for image, prompt, value in zip(images, PROMPTS, values):
        with torch.no_grad():
            logits = model(**_inputs(processor, image, QUESTION.format(prompt=prompt))).logits[0, -1]
        assert value == pytest.approx(float(torch.softmax(logits.double(), -1)[yes]), rel=1e-4)
    assert len(set(values)) == len(values)  # images and prompts matter


def test_vlm_judge_answers_are_the_models_greedy_generation(folder, reference, images):
    model, processor = reference
    judge = cslg.scorers.get("vlm-judge", model=str(folder), device="cpu", feature="alignment", max_new_tokens=6)
    judgements = judge.judge(images[:2], PROMPTS[:2])
    for image, prompt, judgement in zip(images, PROMPTS, judgements):
        inputs = _inputs(processor, image, QUESTIONS["alignment"].format(prompt=prompt))
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert judgement.answer == answer.strip()
        expected = parse_score(answer)
        assert judgement.score == expected or (math.isnan(judgement.score) and math.isnan(expected))
    unparsable = any(math.isnan(j.score) for j in judgements)
    with pytest.warns(UserWarning, match="scored NaN") if unparsable else contextlib.nullcontext():
        scores = judge.score(images[:2], PROMPTS[:2])
    assert [j.answer for j in judge.answers] == [j.answer for j in judgements]
    assert np.array_equal(np.array(scores), np.array([j.score for j in judgements]), equal_nan=True)


@pytest.mark.parametrize("answer, expected", [
    ("SCORE: 7", 7), ("score:8", 8), ("**SCORE:** 9", 9), ("Score of 6.5", 6.5), ("My score is 4.", 4),
    ("8/10", 8), ("I'd give it 7 out of 10.", 7), ("10", 10), ("1", 1), ("Seven.", 7), ("score: ten", 10),
    ("On a scale of 1 to 10, this is a 3.", 3), ("On a 1-10 scale: 9", 9),
    ("The image shows 3 hands. SCORE: 6", 6), ("The hands have 6 fingers; 2/10", 2),
    ("Rating: 5\nThe text is blurry.", 5), ("someone holds it, 4", 4),
    ("0", math.nan), ("11", math.nan), ("SCORE: 85/100", math.nan), ("-3", math.nan), ("", math.nan),
    ("I cannot judge this image.", math.nan), ("SCORE: 12, or rather 8", 8),
])
def test_parse_score(answer, expected):
    value = parse_score(answer)
    assert (math.isnan(value) and math.isnan(expected)) or value == expected


def test_errors(tmp_path):
    with pytest.raises(MissingModelError, match=r"vqascore: .*--vqascore-model PATH") as e:
        cslg.scorers.get("vqascore", model=str(tmp_path / "no-such-model"), device="cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(MissingModelError, match="--vlm-judge-model PATH"):
        cslg.scorers.get("vlm-judge", model=str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="--vlm-judge-feature must be one of text, hands, aesthetics, alignment"):
        cslg.scorers.get("vlm-judge", model=str(tmp_path), feature="colour")
