"""Prompt text helpers: Unicode normalisation, quoted-text extraction and file-name slugs."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Opening quote -> the characters that may close it. Straight and curly quotes mix freely.
DOUBLE_QUOTES = {'"': '"”', "“": '"”'}
SINGLE_QUOTES = {"'": "'’", "‘": "'’"}


def normalize_text(s: str) -> str:
    """NFKC-normalise ``s`` (full-width letters and quotes become ASCII), collapse whitespace, strip."""
    return " ".join(unicodedata.normalize("NFKC", s).split())


def extract_quoted(prompt: str) -> list[str]:
    """The quoted strings of a prompt, in order, NFKC-normalised; ``[]`` when it quotes nothing.

    Double quotes (``"…"``, ``“…”``) enclose everything up to the next closing double quote,
    apostrophes included (``"SWEET TOOTH'S"`` stays whole). Single quotes (``'…'``, ``‘…’``)
    only open at the start of a word and only close at the end of one, so apostrophes inside
    words are not quotes: ``Joe's 'Diner'`` gives ``["Diner"]``.
    """
    text = normalize_text(prompt)
    return [q for a, b in quoted_spans(text) if (q := text[a + 1 : b - 1].strip())]


def quoted_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every quoted span of ``text``, quotes included (``text[start:end]``), in order."""
    spans, i = [], 0
    while i < len(text):
        end = _closing_quote(text, i)
        if end is None:
            i += 1
        else:
            spans.append((i, end + 1))
            i = end + 1
    return spans


def _closing_quote(text: str, start: int) -> int | None:
    """Index of the quote closing the one opened at ``text[start]``; None if ``start`` opens nothing."""
    char = text[start]
    if char in DOUBLE_QUOTES:
        closers = DOUBLE_QUOTES[char]
        return next((j for j in range(start + 1, len(text)) if text[j] in closers), None)
    if char in SINGLE_QUOTES and not _is_word_char(text, start - 1):
        closers = SINGLE_QUOTES[char]
        return next(
            (j for j in range(start + 1, len(text)) if text[j] in closers and not _is_word_char(text, j + 1)),
            None,
        )
    return None


def _is_word_char(text: str, i: int) -> bool:
    """Whether ``text[i]`` exists and is a letter or digit."""
    return 0 <= i < len(text) and text[i].isalnum()


def prompt_slug(prompt: str, max_len: int = 40) -> str:
    """File-name-safe name for a prompt: ``<ascii slug, at most max_len chars>-<sha1[:8] of the prompt>``.

    The slug is the prompt lowercased, accents dropped, every run of other characters than
    ``a-z0-9`` replaced by ``-``; it is ``prompt`` when nothing is left. The hash keeps prompts
    that share their first ``max_len`` characters apart.
    """
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:max_len].rstrip("-")
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
    return f"{slug or 'prompt'}-{digest}"
