"""The ``cslg`` command: ``cslg capture | analyse | grid | eval | inspect | paper``, for every supported family
(taken from the loaded model). One module per command, each with ``configure(parser)`` (its flags) and ``run``;
the upstream-named scripts are the same commands with the paper's constants. Importing this package loads nothing
heavy; a command loads torch and diffusers when it runs."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from .common import Formatter

# command -> (module, help line)
COMMANDS = {
    "capture": ("capture", "step 1: per block and step, how prompt pairs differ (--finder contrast / ablation / "
                           "patching) -> .safetensors"),
    "analyse": ("analyse", "step 2: rank the blocks -> layers.json and figures"),
    "grid": ("grid", "step 3: images of the guidance methods and their settings -> run folder"),
    "eval": ("eval", "step 4: OCR and scorer scores of a run folder -> tables, paired comparisons, plots"),
    "inspect": ("inspect_capture", "what a capture file holds"),
    "paper": ("paper", "the paper's SD3 table (upstream protocol, OCR, upstream's means beside ours)"),
}


def command_parser(doc: str, module, **constants) -> argparse.ArgumentParser:
    """The parser of one command for a script: its flags with the script's ``constants`` as defaults."""
    return module.configure(argparse.ArgumentParser(description=doc, formatter_class=Formatter), **constants)


def parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="cslg", description=__doc__.splitlines()[0], formatter_class=Formatter)
    p.add_argument("--version", action="version", version=f"cslg {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help) in COMMANDS.items():
        command = sub.add_parser(name, help=help, description=help, formatter_class=Formatter)
        import_module(f".{module}", __name__).configure(command)
        command.set_defaults(command_parser=command)
    return p


def run(argv: list[str] | None = None):
    """Parse ``argv`` and run the command; returns what the command returns (a path, a result)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        raise SystemExit(f"cslg: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} (cslg --help)")
    args = parser().parse_args(argv)
    return import_module(f".{COMMANDS[args.command][0]}", __name__).run(args, args.command_parser)


def main(argv: list[str] | None = None) -> int:
    """The console entry point: exit status 0 on success (errors exit with their one-line message)."""
    run(argv)
    return 0
