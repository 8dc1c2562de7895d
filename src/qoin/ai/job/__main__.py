"""``python -m qoin_ai_job train|infer ...``: the AI job program's command line (docs/ai.md).

Pure Python up to the point where a command runs: the environment is made safe for a read-only
sandbox (caches under ``$TMPDIR``, which is ``/work`` in a job; deterministic math libraries)
before PyTorch is imported by :mod:`.train`. Bad input ends with one JSON line
``{"event": "error", "error": ...}`` on stdout and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import tensorfile

EXIT_BAD_INPUT = 2
ARCHS = ("mlp", "cnn", "charlm")
ANSWERS = ("json", "label")
"""What ``infer`` prints: the JSON event line, or the answer only (``label``: the predicted
labels one a line, or the generated text, cut to 256 bytes: :data:`.train.ANSWER_BYTES`) for a
contract's callback (docs/spec/compute.md §3.12); predictions.json holds the whole object either
way."""


class BadArguments(ValueError):
    """The command line is wrong."""


def error_line(message: str) -> None:
    print(json.dumps({"error": message, "event": "error"}, sort_keys=True), flush=True)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadArguments(f"{self.prog}: {message}")


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not from {low} to {high}")
        return value

    return parse


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not sizes like 128,64") from exc
    if not 1 <= len(sizes) <= 16 or any(not 1 <= size <= 65536 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: 1 to 16 sizes from 1 to 65536")
    return sizes


def parser() -> Parser:
    top = Parser(prog="qoin_ai_job", description="Qoin's AI job program (docs/ai.md).")
    commands = top.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = commands.add_parser("train", help="train (or fine-tune) a model on a dataset")
    train.add_argument("--arch", choices=ARCHS, required=True)
    train.add_argument("--data", required=True, help="the dataset (a qoin-dataset file)")
    train.add_argument("--base", help="a model file to fine-tune (same arch)")
    train.add_argument("--epochs", type=_bounded(1, 100_000), required=True)
    train.add_argument("--lr", type=_positive_float, required=True)
    train.add_argument("--batch", type=_bounded(1, 1 << 20), required=True)
    train.add_argument("--seed", type=_bounded(0, (1 << 63) - 1), required=True)
    train.add_argument("--hidden", type=_sizes, help="mlp hidden sizes (default 128,64)")
    infer = commands.add_parser("infer", help="predict with a model, or generate text")
    infer.add_argument("--model", required=True)
    infer.add_argument("--input", required=True, help="a qoin-input file")
    infer.add_argument("--tokens", type=_bounded(0, 100_000), default=200)
    infer.add_argument("--seed", type=_bounded(0, (1 << 63) - 1), default=0)
    infer.add_argument(
        "--answer",
        choices=ANSWERS,
        default="json",
        help="stdout: the JSON event (json), or only the predicted labels one a line or the "
        "generated text, at most 256 bytes (label: a contract's answer)",
    )
    for command in (train, infer):
        command.add_argument("--threads", type=_bounded(1, 1024), required=True)
        command.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
        command.add_argument("--out", required=True, help="the output directory")
    return top


MKL_CBWR = "COMPATIBLE,STRICT"
"""MKL's code path: the one that gives the same bits on every x86 processor, Intel's and AMD's
(``AUTO`` picks a path per processor, so two providers with the same runtime ref, e.g. both
``AVX512``, would disagree in the last bits of every matrix product)."""


def prepare_environment(threads: int) -> None:
    """Before PyTorch is imported: caches in the temporary directory (``/work`` in a job), the
    math libraries told to be reproducible and to start ``threads`` threads (set whatever the
    environment said: they decide the result's bits)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    cache = os.path.join(tempfile.gettempdir(), "qoin-ai-cache")
    for name in ("TORCH_HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "CUDA_CACHE_PATH"):
        os.environ.setdefault(name, cache)
    os.environ["MKL_CBWR"] = MKL_CBWR
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("KMP_WARNINGS", "0")


def _meta(path: str, kind: str, what: str) -> dict[str, Any]:
    meta = tensorfile.read_meta(Path(path))
    if meta.get("format") != kind or meta.get("version") != 1:
        found = meta.get("format")
        raise BadArguments(f"{what} {path} is not a {kind} version 1 file (its format: {found!r})")
    return meta


def precheck(args: argparse.Namespace) -> None:
    """The checks that need no PyTorch (files, formats, tasks), before it is imported: bad input
    is refused at once."""
    if args.command == "train":
        data = _meta(args.data, "qoin-dataset", "dataset")
        task = data.get("task")
        if args.arch == "charlm" and task != "text":
            raise BadArguments(f"arch charlm trains on a text dataset; this dataset is {task}")
        if args.arch != "charlm" and task != "classification":
            raise BadArguments(
                f"arch {args.arch} trains on a classification dataset; this one is {task}"
            )
        if args.base:
            base = _meta(args.base, "qoin-model", "model")
            if base.get("arch") != args.arch:
                raise BadArguments(f"--base is a {base.get('arch')} model, not {args.arch}")
        return
    model = _meta(args.model, "qoin-model", "model")
    given = _meta(args.input, "qoin-input", "input")
    if given.get("task") != model.get("task"):
        raise BadArguments(
            f"input {args.input}: its task {given.get('task')!r} is not the model's "
            f"({model.get('task')})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except BadArguments as exc:
        error_line(str(exc))
        return EXIT_BAD_INPUT
    try:
        precheck(args)
    except (BadArguments, tensorfile.TensorFileError) as exc:
        error_line(str(exc))
        return EXIT_BAD_INPUT
    prepare_environment(args.threads)
    from . import train  # noqa: PLC0415 (torch only once the environment is set)

    try:
        if args.command == "train":
            train.run_train(args)
        else:
            train.run_infer(args)
    except train.BAD_INPUT as exc:
        error_line(str(exc))
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
