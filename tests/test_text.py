import hashlib

import pytest

from cslg.text import extract_quoted, normalize_text, prompt_slug


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("The word 'STOP' on a red sign.", ["STOP"]),
        ('A mug with the word "SMILE" on it', ["SMILE"]),
        ("Joe's 'Diner' at night", ["Diner"]),
        ("a diner sign that says \"SWEET TOOTH'S\"", ["SWEET TOOTH'S"]),
        ("a diner sign that says 'SWEET TOOTH'S'", ["SWEET TOOTH'S"]),
        ("a neon sign that reads ‘JAZZ’", ["JAZZ"]),
        ("a poster with the headline “THE GREAT CARNIVAL”", ["THE GREAT CARNIVAL"]),
        ("a book titled ‘Joe’s Diner’", ["Joe’s Diner"]),
        ("a café called “MOM’S KITCHEN”", ["MOM’S KITCHEN"]),
        ("a road sign: 'EXIT 42', \"DOWNTOWN\" and “AIRPORT”", ["EXIT 42", "DOWNTOWN", "AIRPORT"]),
        ("a label saying '  spaced  out  '", ["spaced out"]),
        ("a sign saying ＂ＦＵＬＬ＂", ["FULL"]),  # full-width quotes and letters, NFKC
        ("a brown dog sitting on a sidewalk", []),
        ("it's the dogs' bowl", []),
        ("an empty sign '' on a wall", []),
        ("an unclosed 'quote on a wall", []),
        ("", []),
    ],
)
def test_extract_quoted(prompt, expected):
    assert extract_quoted(prompt) == expected


def test_normalize_text_nfkc_and_whitespace():
    assert normalize_text("  ＨＥＬＬＯ\t\nﬁne  ") == "HELLO fine"


def test_prompt_slug_shape():
    prompt = "A sign/that says 'Café' ÜBER"
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
    assert prompt_slug(prompt) == f"a-sign-that-says-cafe-uber-{digest}"


def test_prompt_slug_truncates_and_never_empty():
    long_slug = prompt_slug("word " * 50, max_len=12)
    assert long_slug.startswith("word-word-wo-") and len(long_slug) == 12 + 1 + 8
    assert prompt_slug("!!! ///").startswith("prompt-")
    assert prompt_slug("日本語").startswith("prompt-")
    assert prompt_slug("word " * 2, max_len=5) == "word-" + hashlib.sha1(b"word word ").hexdigest()[:8]


def test_prompt_slug_distinguishes_prompts_sharing_a_prefix():
    a, b = prompt_slug("x" * 50 + " one"), prompt_slug("x" * 50 + " two")
    assert a != b and "/" not in a + b
