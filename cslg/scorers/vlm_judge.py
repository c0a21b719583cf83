"""VLM judge: a chat vision-language model rates one feature of each image on a 1-10 scale.

Definition (as upstream CSLG's ``eval/eval_vlm.py``, an InternVL3-14B judge with one instruction per feature and a
numeric answer; the questions here are written for this project): the model is asked the question of ``feature``
(``text`` legibility, ``hands``, ``aesthetics`` or prompt ``alignment``) about the image and answers greedily (at most
``max_new_tokens`` tokens); the score is the number parsed from its answer by ``parse_score``: the number after
"score" (``SCORE: 7``), else the number before "/10" or "out of 10", else the first number in [1, 10], after
removing the scale itself ("1-10", "1 to 10"). An answer without such a number scores NaN, and its raw text is kept
(``judge`` returns it; ``answers`` keeps every answer this scorer gave).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from .vlm import VisionLanguageScorer

LOW, HIGH = 1, 10
_ASK = " Rate it from 1 (worst) to 10 (best). Answer with 'SCORE: N' and nothing else."
QUESTIONS: dict[str, str] = {
    "text": "How legible and correctly spelled is the text written in this image?" + _ASK,
    "hands": "How anatomically correct are the human hands in this image (five fingers, natural pose)?" + _ASK,
    "aesthetics": "How aesthetically pleasing is this image (composition, lighting, colour, detail)?" + _ASK,
    "alignment": "How well does this image show the prompt '{prompt}'?" + _ASK,
}
WORDS = {w: i for i, w in enumerate(("zero one two three four five six seven eight nine ten").split())}
_NUMBER = r"\d+(?:\.\d+)?|" + "|".join(WORDS)


def _value(token: str) -> float:
    return float(WORDS[token.lower()]) if token.lower() in WORDS else float(token)


def parse_score(answer: str, low: float = LOW, high: float = HIGH) -> float:
    """The score in ``[low, high]`` an answer gives (NaN when it gives none): the number after "score", else the
    number before "/high" or "out of high", else the first number in range; the scale ("1-10", "1 to 10") is
    skipped."""
    text = re.sub(rf"\b{low:g}\s*(?:-|–|to)\s*{high:g}\b", " ", answer, flags=re.IGNORECASE)
    patterns = (rf"score\W{{0,6}}(?:is\W{{0,3}}|of\W{{0,3}})?({_NUMBER})\b",
                rf"\b({_NUMBER})\s*(?:/|out\s+of)\s*{high:g}\b",
                rf"(?<![\w.-])({_NUMBER})\b")
    for pattern in patterns:
        for match in re.finditer(pattern, text, flags=re.IGNORECASE):
            value = _value(match.group(1))
            if low <= value <= high:
                return value
    return math.nan


@dataclass(frozen=True)
class Judgement:
    """One image's judgement: the parsed score (NaN when unparsable) and the model's raw answer."""

    score: float
    answer: str


class VLMJudge(VisionLanguageScorer):
    """A 1-10 rating of one feature (``feature``: text, hands, aesthetics, alignment) by a chat VLM."""

    name: ClassVar[str] = "vlm-judge"
    citation: ClassVar[str] = "upstream CSLG eval/eval_vlm.py (InternVL3 judge); Zheng et al. 2023, LLM-as-a-judge"

    def __init__(self, model: str | os.PathLike | None = None, device: Any = None, dtype: Any = None,
                 batch_size: int = 8, feature: str = "alignment", max_new_tokens: int = 16):
        if feature not in QUESTIONS:
            raise ValueError(f"vlm-judge: --vlm-judge-feature must be one of {', '.join(QUESTIONS)}, not {feature!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"vlm-judge: max_new_tokens must be a positive integer, not {max_new_tokens!r}")
        self.feature, self.max_new_tokens = feature, max_new_tokens
        self.answers: list[Judgement] = []
        super().__init__(model=model, device=device, dtype=dtype, batch_size=batch_size)

    def judge(self, images: list, prompts: list[str]) -> list[Judgement]:
        """The parsed score and raw answer of each image (one batch)."""
        import torch

        texts = [self.chat_prompt(QUESTIONS[self.feature].format(prompt=p)) for p in prompts]
        inputs = self.encode(images, texts)
        with torch.no_grad():
            generated = self.vlm.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answers = self.tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [Judgement(parse_score(a), a.strip()) for a in answers]

    def score_batch(self, images: list, prompts: list[str]) -> list[float]:
        judgements = self.judge(images, prompts)
        self.answers.extend(judgements)
        unparsable = [j.answer for j in judgements if math.isnan(j.score)]
        if unparsable:
            warnings.warn(f"vlm-judge: {len(unparsable)} answer(s) without a score in [{LOW}, {HIGH}] scored NaN, "
                          f"e.g. {unparsable[0][:80]!r}", stacklevel=2)
        return [j.score for j in judgements]
