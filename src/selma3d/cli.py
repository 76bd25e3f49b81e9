"""The ``selma3d`` command: one sub-command per user task, each in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

from selma3d.core.errors import InputError

#: sub-command -> (module, one-line help). Each module has configure_parser(p) and run(args).
COMMANDS = {
    "evaluate": ("selma3d.evaluation.evaluate", "score predictions against ground truth (SELMA3D 2024/2026 protocols)"),
    "download": ("selma3d.data.download", "fetch a dataset manifest's files with resume and SHA-256 checks"),
    "predict": ("selma3d.inference.volume", "segment a whole volume block-wise with a trained model"),
    "synthesize": ("selma3d.data.synth", "write the synthetic light-sheet dataset"),
    "import-weights": ("selma3d.nets.imports",
                       "convert a published pretrained checkpoint into this pipeline's encoder weights"),
    "ensemble": ("selma3d.training.ensemble", "average finetuned models (e.g. a run's seeds) into one model.pt"),
    "config": ("selma3d.config", "show the resolved config and every strategy's network (config show)"),
    "export-algorithm": ("selma3d.inference.export",
                         "export a finetuned run as a SELMA3D challenge algorithm (Docker build folder)"),
    "check-algorithm": ("selma3d.inference.check",
                        "run an exported algorithm locally (no Docker) and check its outputs against the pipeline"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``only``, just that command's module is imported (so
    ``selma3d config show`` does not import torch)."""
    parser = argparse.ArgumentParser(prog="selma3d", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if only is not None and name != only:
            continue
        try:
            importlib.import_module(module).configure_parser(p)
        except (ImportError, AttributeError) as exc:  # a command under construction
            p.set_defaults(_unavailable=str(exc))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    if getattr(args, "_unavailable", None):
        print(f"selma3d {args.command}: not available: {args._unavailable}", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except InputError as exc:  # bad input: one line naming the file, no traceback
        print(f"selma3d {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
