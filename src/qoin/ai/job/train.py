"""Training, fine-tuning, evaluation, inference and generation (imports PyTorch; docs/ai.md).

Deterministic: the weights start from ``torch.manual_seed(seed)``, each epoch shuffles with a
generator seeded from (seed, the epoch's number counted over fine-tunes too), deterministic
algorithms only, a fixed number of threads; stdout and the output files hold no wall-clock value
(timings go to stderr), so the same command in the same runtime gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional

from . import models, tensorfile
from .models import ConfigError
from .tensorfile import Array, TensorFileError

MAX_FILE = 4 << 30
"""The largest dataset, model or input file read."""
EVAL_BATCH = 1024
EVAL_WINDOWS = 512
"""Held-out text windows evaluated at most."""
TEMPERATURE = 0.8
"""Sampling temperature of text generation."""
EPOCH_SEED = 1_000_003
ANSWER_BYTES = 256
"""The most stdout ``infer --answer label`` prints: what a contract's callback carries at most
(``MAX_ANSWER`` of docs/spec/compute.md §3.12)."""


class JobError(ValueError):
    """Input the program cannot work with (the message says what to change)."""


BAD_INPUT = (JobError, TensorFileError, ConfigError)


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event, sort_keys=True), flush=True)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- tensors ---------------------------------------------------------------------------------------

TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "uint8": torch.uint8}


def to_tensor(array: Array) -> torch.Tensor:
    if sys.byteorder != "little":
        raise JobError("this program needs a little-endian machine")
    dtype = TORCH_DTYPES[array.dtype]
    if array.count == 0:
        return torch.empty(array.shape, dtype=dtype)
    return torch.frombuffer(bytearray(array.data), dtype=dtype).reshape(array.shape)


def to_array(name: str, tensor: torch.Tensor) -> Array:
    tensor = tensor.detach().to("cpu", torch.float32).contiguous()
    return Array(name, "float32", tuple(tensor.shape), tensor.numpy().tobytes())


# -- inputs ----------------------------------------------------------------------------------------


def _require(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise JobError(f"{what}: meta {key!r} is missing or not the right type")
    return value


def _array(file: tensorfile.TensorFile, name: str, dtype: str, what: str) -> torch.Tensor:
    array = file.get(name)
    if array is None or array.dtype != dtype:
        raise JobError(f"{what}: needs an array {name!r} of {dtype}")
    return to_tensor(array)


def _check_format(meta: dict[str, Any], kind: str, what: str) -> None:
    if meta.get("format") != kind or meta.get("version") != 1:
        found = meta.get("format")
        raise JobError(f"{what} is not a {kind} version 1 file (its format: {found!r})")


@dataclass
class Classes:
    """A classification dataset: train and held-out rows."""

    names: list[str]
    shape: list[int]
    x: torch.Tensor
    y: torch.Tensor
    test: int


@dataclass
class Text:
    """A text dataset: the training and held-out text."""

    train: str
    held_out: str


def _class_names(meta: dict[str, Any], what: str) -> list[str]:
    names = _require(meta, "classes", list, what)
    if not names or not all(isinstance(name, str) for name in names):
        raise JobError(f"{what}: 'classes' must be a non-empty list of names")
    return list(names)


def _shape(meta: dict[str, Any], what: str) -> list[int]:
    shape = _require(meta, "shape", list, what)
    if not 1 <= len(shape) <= 3 or any(type(d) is not int or d < 1 for d in shape):
        raise JobError(f"{what}: 'shape' must be 1 to 3 sizes >= 1, not {shape!r}")
    return list(shape)


def load_dataset(path: str) -> Classes | Text:
    what = f"dataset {path}"
    file = tensorfile.read(Path(path), MAX_FILE)
    meta = file.meta
    _check_format(meta, "qoin-dataset", what)
    task = meta.get("task")
    test = _require(meta, "test", int, what)
    if task == "text":
        raw = _array(file, "text", "uint8", what)
        if not 2 <= test <= raw.numel() - 2:
            raise JobError(f"{what}: held-out bytes {test} must be from 2 to the text's size - 2")
        data = file.get("text")
        body = data.data if data is not None else b""
        try:
            return Text(body[:-test].decode("utf-8"), body[-test:].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise JobError(f"{what}: the text is not UTF-8 split at a character: {exc}") from exc
    if task != "classification":
        raise JobError(f"{what}: unknown task {task!r} (classification or text)")
    names = _class_names(meta, what)
    shape = _shape(meta, what)
    x = _array(file, "x", "float32", what)
    y = _array(file, "y", "int64", what)
    rows = y.shape[0] if y.dim() == 1 else -1
    if rows < 2 or list(x.shape) != [rows, *shape]:
        raise JobError(
            f"{what}: x {list(x.shape)} and y {list(y.shape)} must be [n, *{shape}], [n]"
        )
    if not 1 <= test < rows:
        raise JobError(f"{what}: held-out rows {test} must be from 1 to {rows - 1}")
    if int(y.min()) < 0 or int(y.max()) >= len(names):
        raise JobError(f"{what}: a label is outside 0..{len(names) - 1}")
    if not bool(torch.isfinite(x).all()):
        raise JobError(f"{what}: x holds NaN or infinite values")
    return Classes(names, shape, x, y, test)


@dataclass
class Model:
    arch: str
    config: dict[str, Any]
    meta: dict[str, Any]
    net: torch.nn.Module


def load_model(path: str) -> Model:
    what = f"model {path}"
    file = tensorfile.read(Path(path), MAX_FILE)
    meta = file.meta
    _check_format(meta, "qoin-model", what)
    arch = _require(meta, "arch", str, what)
    config = _require(meta, "config", dict, what)
    if arch not in models.ARCHS:
        raise JobError(f"{what}: unknown arch {arch!r}")
    task = meta.get("task")
    if task != ("text" if arch == "charlm" else "classification"):
        raise JobError(f"{what}: task {task!r} does not fit arch {arch}")
    if arch == "charlm":
        vocab = _require(meta, "vocab", str, what)
        if len(vocab) != config.get("vocab") or len(set(vocab)) != len(vocab):
            raise JobError(f"{what}: 'vocab' does not match its config")
    else:
        names = _class_names(meta, what)
        _shape(meta, what)
        if config.get("classes") != len(names):
            raise JobError(f"{what}: 'classes' does not match its config")
    _require(meta, "trained", dict, what)
    # the config's shapes first, on the meta device (nothing allocated): a config far larger
    # than the file's parameters is refused, never built
    with torch.device("meta"):
        state = models.build(arch, config).state_dict()
    if file.names() != list(state):
        raise JobError(f"{what}: its arrays are not the parameters of a {arch} of its config")
    loaded = {}
    for array in file.arrays:
        if array.dtype != "float32" or list(array.shape) != list(state[array.name].shape):
            raise JobError(f"{what}: parameter {array.name} has the wrong shape or type")
        loaded[array.name] = to_tensor(array)
    net = models.build(arch, config)  # as large as the file's parameters
    net.load_state_dict(loaded)
    return Model(arch, config, meta, net)


# -- set-up ----------------------------------------------------------------------------------------


def set_up(threads: int, device: str, seed: int) -> torch.device:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.manual_seed(seed)
    if device == "cuda" and not torch.cuda.is_available():
        raise JobError("--device cuda: no CUDA device is usable here")
    return torch.device(device)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * EPOCH_SEED + epoch) % (1 << 63))


def number(value: float) -> float:
    """A finite float (a loss that diverged is reported as a large number, never NaN)."""
    return value if math.isfinite(value) else 1e308


# -- classification --------------------------------------------------------------------------------


def _classification_epoch(
    net: torch.nn.Module,
    data: Classes,
    optimizer: torch.optim.Optimizer,
    batch: int,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    rows = data.x.shape[0] - data.test
    order = torch.randperm(rows, generator=generator)
    net.train()
    total = 0.0
    for start in range(0, rows, batch):
        index = order[start : start + batch]
        x, y = data.x[index].to(device), data.y[index].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        total += float(loss.item()) * index.shape[0]
    return float(total / rows)


def _classify(net: torch.nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits for every row of ``x``, in batches."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], EVAL_BATCH):
            out.append(net(x[start : start + EVAL_BATCH].to(device)).cpu())
    return torch.cat(out) if out else torch.empty(0)


def _classification_test(
    net: torch.nn.Module, data: Classes, device: torch.device
) -> tuple[float, float]:
    held = data.x.shape[0] - data.test
    logits = _classify(net, data.x[held:], device)
    y = data.y[held:]
    loss = float(functional.cross_entropy(logits, y).item())
    accuracy = int((logits.argmax(1) == y).sum()) / y.shape[0]
    return loss, accuracy


# -- text ------------------------------------------------------------------------------------------


def _encode(text: str, vocab: str, what: str) -> torch.Tensor:
    index = {char: position for position, char in enumerate(vocab)}
    ids = [index[char] for char in text if char in index]
    if len(ids) != len(text):
        note(f"{what}: {len(text) - len(ids)} characters not in the model's vocabulary left out")
    return torch.tensor(ids, dtype=torch.int64)


def _windows(ids: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
    return ids[starts[:, None] + torch.arange(width + 1)]


def _lm_loss(net: torch.nn.Module, windows: torch.Tensor, device: torch.device) -> torch.Tensor:
    windows = windows.to(device)
    logits = net(windows[:, :-1])
    return functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)
    )


def _text_epoch(
    net: torch.nn.Module,
    ids: torch.Tensor,
    context: int,
    optimizer: torch.optim.Optimizer,
    batch: int,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    width = min(context, ids.shape[0] - 1)
    phase = int(torch.randint(0, width, (1,), generator=generator))
    if phase >= ids.shape[0] - width:
        phase = 0
    starts = torch.arange(phase, ids.shape[0] - width, width)
    starts = starts[torch.randperm(starts.shape[0], generator=generator)]
    net.train()
    total = 0.0
    for first in range(0, starts.shape[0], batch):
        chosen = starts[first : first + batch]
        optimizer.zero_grad(set_to_none=True)
        loss = _lm_loss(net, _windows(ids, chosen, width), device)
        loss.backward()
        optimizer.step()
        total += float(loss.item()) * chosen.shape[0]
    return float(total / starts.shape[0])


def _text_test(
    net: torch.nn.Module, ids: torch.Tensor, context: int, device: torch.device
) -> float:
    width = min(context, ids.shape[0] - 1)
    starts = torch.arange(0, ids.shape[0] - width, width)[:EVAL_WINDOWS]
    net.eval()
    total = 0.0
    with torch.no_grad():
        for first in range(0, starts.shape[0], EVAL_BATCH // 8):
            chosen = starts[first : first + EVAL_BATCH // 8]
            total += float(_lm_loss(net, _windows(ids, chosen, width), device)) * chosen.shape[0]
    return float(total / starts.shape[0])


# -- train -----------------------------------------------------------------------------------------


def _fresh_config(arch: str, data: Classes | Text, hidden: list[int] | None) -> dict[str, Any]:
    if arch == "charlm":
        if not isinstance(data, Text):
            raise JobError("arch charlm trains on a text dataset; this dataset is classification")
        return models.charlm_config(len(set(data.train + data.held_out)))
    if not isinstance(data, Classes):
        raise JobError(f"arch {arch} trains on a classification dataset; this one is text")
    if arch == "cnn":
        return models.cnn_config(data.shape, len(data.names))
    return models.mlp_config(data.shape, len(data.names), hidden)


def _check_base(base: Model, arch: str, data: Classes | Text) -> None:
    if base.arch != arch:
        raise JobError(f"--base is a {base.arch} model, not {arch}")
    if isinstance(data, Classes) and (
        base.meta.get("classes") != data.names or base.meta.get("shape") != data.shape
    ):
        raise JobError(
            "--base was trained on other classes or sample shape than this dataset "
            f"(its classes {base.meta.get('classes')}, shape {base.meta.get('shape')}; "
            f"the dataset's {data.names}, {data.shape})"
        )


def _model_for(
    args: argparse.Namespace, data: Classes | Text
) -> tuple[Model | None, dict[str, Any], torch.nn.Module, int]:
    """The base model (if any), the config, the network and the epochs it was trained so far."""
    if not args.base:
        config = _fresh_config(args.arch, data, args.hidden)
        return None, config, models.build(args.arch, config), 0
    base = load_model(args.base)
    _check_base(base, args.arch, data)
    if args.hidden is not None:
        raise JobError("--hidden cannot change a --base model's layers")
    done = base.meta["trained"].get("epochs", 0)
    if type(done) is not int or done < 0:
        raise JobError(f"--base {args.base}: its trained epochs {done!r} are not a count")
    return base, base.config, base.net, done


def _text_ids(data: Text, vocab: str) -> tuple[torch.Tensor, torch.Tensor]:
    train_ids = _encode(data.train, vocab, "the training text")
    test_ids = _encode(data.held_out, vocab, "the held-out text")
    if train_ids.shape[0] < 2 or test_ids.shape[0] < 2:
        raise JobError("the text needs at least 2 known characters to train and to test on")
    return train_ids, test_ids


def run_train(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    device = set_up(args.threads, args.device, args.seed)
    data = load_dataset(args.data)
    base, config, net, done = _model_for(args, data)
    net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    meta: dict[str, Any] = {"arch": args.arch, "config": config, "format": "qoin-model"}
    if isinstance(data, Classes):
        meta.update(task="classification", classes=data.names, shape=data.shape)
        train_rows, test_rows = data.x.shape[0] - data.test, data.test
    else:
        own = "".join(sorted(set(data.train + data.held_out)))
        meta.update(task="text", vocab=base.meta["vocab"] if base is not None else own)
        train_ids, test_ids = _text_ids(data, meta["vocab"])
        train_rows, test_rows = train_ids.shape[0], test_ids.shape[0]
        context = int(config["context"])
    params = sum(parameter.numel() for parameter in net.parameters())
    emit(
        {
            "arch": args.arch,
            "epochs": args.epochs,
            "event": "start",
            "params": params,
            "test": test_rows,
            "train": train_rows,
        }
    )
    history = []
    loss = test_loss = 0.0
    accuracy: float | None = None
    for epoch in range(1, args.epochs + 1):
        generator = epoch_generator(args.seed, done + epoch)
        if isinstance(data, Classes):
            loss = _classification_epoch(net, data, optimizer, args.batch, generator, device)
            test_loss, accuracy = _classification_test(net, data, device)
        else:
            loss = _text_epoch(net, train_ids, context, optimizer, args.batch, generator, device)
            test_loss = _text_test(net, test_ids, context, device)
        record = {
            "accuracy": accuracy,
            "epoch": epoch,
            "epochs": args.epochs,
            "loss": number(loss),
            "testLoss": number(test_loss),
        }
        history.append(record)
        emit({"event": "epoch", **record})
    metrics = {"accuracy": accuracy, "loss": number(loss), "testLoss": number(test_loss)}
    meta.update(
        metrics=metrics,
        trained={
            "base": base is not None,
            "batch": args.batch,
            "epochs": done + args.epochs,
            "lr": args.lr,
            "seed": args.seed,
        },
        version=1,
    )
    out = _out_dir(args.out)
    arrays = [to_array(name, tensor) for name, tensor in net.state_dict().items()]
    tensorfile.write(out / "model.qm", meta, arrays)
    summary = {**metrics, "arch": args.arch, "epochs": done + args.epochs, "history": history}
    _write_json(out / "metrics.json", summary)
    emit({"event": "done", **metrics, "model": "model.qm"})
    note(f"trained in {time.perf_counter() - began:.2f} s")


def _out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobError(f"cannot make the output directory {out}: {exc.strerror}") from exc
    return out


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, sort_keys=True, indent=1) + "\n")


# -- infer -----------------------------------------------------------------------------------------


def _generate(model: Model, prompt: str, tokens: int, seed: int, device: torch.device) -> str:
    vocab: str = model.meta["vocab"]
    ids = _encode(prompt, vocab, "the prompt").tolist()
    if not ids:
        ids = [vocab.index("\n") if "\n" in vocab else 0]
    context = int(model.config["context"])
    generator = torch.Generator().manual_seed(seed)
    net = model.net
    net.eval()
    made = []
    with torch.no_grad():
        for _ in range(tokens):
            window = torch.tensor([ids[-context:]], dtype=torch.int64, device=device)
            logits = net(window)[0, -1].float().cpu()
            probabilities = torch.softmax(logits / TEMPERATURE, dim=0)
            chosen = int(torch.multinomial(probabilities, 1, generator=generator))
            ids.append(chosen)
            made.append(vocab[chosen])
    return "".join(made)


def run_infer(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    device = set_up(args.threads, args.device, args.seed)
    model = load_model(args.model)
    model.net.to(device)
    what = f"input {args.input}"
    file = tensorfile.read(Path(args.input), MAX_FILE)
    _check_format(file.meta, "qoin-input", what)
    task = model.meta["task"]
    if file.meta.get("task") != task:
        raise JobError(f"{what}: its task {file.meta.get('task')!r} is not the model's ({task})")
    result: dict[str, Any]
    if task == "text":
        prompt = _require(file.meta, "prompt", str, what)
        text = _generate(model, prompt, args.tokens, args.seed, device)
        result = {"event": "generated", "text": text}
    else:
        shape = model.meta["shape"]
        x = _array(file, "x", "float32", what)
        if x.dim() < 1 or x.shape[0] < 1 or x[0].numel() != math.prod(shape):
            raise JobError(f"{what}: x {list(x.shape)} is not rows of shape {shape}")
        x = x.reshape(x.shape[0], *shape)
        if not bool(torch.isfinite(x).all()):
            raise JobError(f"{what}: x holds NaN or infinite values")
        probabilities = torch.softmax(_classify(model.net, x, device), dim=1)
        predictions = [int(index) for index in probabilities.argmax(1)]
        names = model.meta["classes"]
        result = {
            "event": "predictions",
            "labels": [names[index] for index in predictions],
            "predictions": predictions,
            "probabilities": [[round(float(p), 6) for p in row] for row in probabilities],
        }
    _write_json(_out_dir(args.out) / "predictions.json", result)
    if args.answer == "label":
        sys.stdout.write(answer_text(result))
        sys.stdout.flush()
    else:
        emit(result)
    note(f"inferred in {time.perf_counter() - began:.2f} s")


def answer_text(result: dict[str, Any], limit: int = ANSWER_BYTES) -> str:
    """``infer --answer label``'s stdout: the predicted labels one a line (as many whole lines
    as fit in ``limit`` bytes), or the generated text cut to ``limit`` bytes (whole
    characters)."""
    if result["event"] == "generated":
        return _cut(result["text"], limit)
    shown = ""
    for label in result["labels"]:
        line = f"{label}\n"
        if len((shown + line).encode()) > limit:
            break
        shown += line
    return shown or _cut(f"{result['labels'][0]}\n", limit)


def _cut(text: str, limit: int) -> str:
    """``text``'s first ``limit`` bytes of UTF-8, ending on a whole character."""
    return text.encode()[:limit].decode(errors="ignore")
