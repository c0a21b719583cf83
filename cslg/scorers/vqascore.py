"""VQAScore: the probability that a vision-language model answers "Yes" to whether the image shows the prompt.

Definition (Lin et al. 2024, "Evaluating Text-to-Visual Generation with Image-to-Text Generation", ECCV 2024,
arXiv:2404.01291): with the question ``q = "Does this figure show '{prompt}'? Please answer yes or no."`` asked in one
user turn with the image, and the assistant's answer opened by the chat template,

    VQAScore = P("Yes" | image, q) = prod_t softmax(logits_t)[y_t],

the softmax over the full vocabulary of the next-token logits at each answer position, teacher-forced over the
tokens ``y`` of "Yes" (for the usual tokenizers "Yes" is one token: the score is the softmax at the answer position).
It is in [0, 1]; a score near 0.5 is an undecided model, not half an alignment.
"""

from __future__ import annotations

from typing import ClassVar

from .vlm import VisionLanguageScorer

QUESTION = "Does this figure show '{prompt}'? Please answer yes or no."
ANSWER = "Yes"


class VQAScore(VisionLanguageScorer):
    """P("Yes") to "Does this figure show '{prompt}'?" from a chat VLM (any image-text-to-text model)."""

    name: ClassVar[str] = "vqascore"
    citation: ClassVar[str] = "Lin et al. 2024, VQAScore (arXiv:2404.01291)"

    def score_batch(self, images: list, prompts: list[str]) -> list[float]:
        import torch

        prompts_text = [self.chat_prompt(QUESTION.format(prompt=p)) for p in prompts]
        lengths = []
        for text in prompts_text:
            before = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            after = self.tokenizer(text + ANSWER, add_special_tokens=False)["input_ids"]
            if after[:len(before)] != before or len(after) == len(before):
                raise ValueError(f"vqascore: {self.model!r}'s tokenizer merges the answer {ANSWER!r} into the end "
                                 f"of the chat prompt; the answer tokens cannot be read apart")
            lengths.append(len(after) - len(before))
        inputs = self.encode(images, [t + ANSWER for t in prompts_text])
        with torch.no_grad():
            logits = self.vlm(**inputs).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        ids = inputs["input_ids"]
        out = []
        for row, k in enumerate(lengths):
            # rows are left-padded: the answer's k tokens end each row, each predicted from the position before it
            targets = ids[row, -k:]
            predicted = logprobs[row, -k - 1:-1].gather(-1, targets[:, None]).sum()
            out.append(float(predicted.exp()))
        return out
