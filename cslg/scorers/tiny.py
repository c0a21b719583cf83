"""Tiny randomly initialised models of the scorers, for the demo and tests: each scorer's ``save_tiny``.

    python -m cslg.scorers.tiny --out outputs/tiny_scorers clip aesthetic-v1
    # prints the flags to use: --clip-model outputs/tiny_scorers/clip --aesthetic-v1-model ...

Without names, every registered scorer. Their scores are meaningless (random weights): they exercise the code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import names, scorer_class


def save_tiny(out: str | os.PathLike, scorers: list[str] | None = None) -> tuple[dict[str, Path], list[str]]:
    """Write each scorer's tiny model to ``<out>/<name>``; returns ``{name: model path}`` and one line per scorer
    that could not write one (its package missing)."""
    written, problems = {}, []
    for name in scorers or names():
        cls = scorer_class(name)  # an unknown name raises, listing the registered ones
        try:
            written[name] = Path(cls.save_tiny(Path(out) / name))
        except ImportError as e:
            problems.append(f"{name}: no tiny model ({e})")
    return written, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder of the tiny models")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"scorers (default: all of {', '.join(names())})")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in names()]
    if unknown:
        parser.error(f"unknown scorer {unknown[0]!r}; choose from {', '.join(names())}")
    try:
        written, problems = save_tiny(args.out, args.names)
    except ImportError as e:
        raise SystemExit(f"error: {e}") from None
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(" ".join(f"--{name}-model {path}" for name, path in written.items()))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
