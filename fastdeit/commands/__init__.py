"""Sub-commands of the `fastdeit` command line: one module per command, named as it, whose `add_parser(subparsers)`
registers it (with `set_defaults(func=run)`). `fastdeit.cli` imports only the module of the command being run, so
`fastdeit --help` lists the commands from the one-line helps here without importing torch or the benchmarks."""

from __future__ import annotations

import argparse

COMMANDS = {
    "demo": "distillation on digits in miniature: convnet teacher, DeiT students without / with distillation",
    "bench": "benchmark DeiT models (img/s) and kernels against timm, Hugging Face, xformers, torch",
    "predict": "top-k classes of image files and folders",
    "embed": "pre-logits features of image files and folders, to safetensors",
    "export": "export a model to ONNX, TorchScript or ExportedProgram (PyTorch backend; verified)",
}


def add_command(subparsers: argparse._SubParsersAction, name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of command `name`: its one-line help from COMMANDS, `doc` (its module docstring) as description."""
    return subparsers.add_parser(
        name, help=COMMANDS[name], description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
