"""What an AI job says and leaves (docs/ai.md): the job program's stdout lines as live progress
(``epoch 3/10  loss 0.2134  test loss 0.25  accuracy 0.941``), and its verified outputs read back
(the model file's header, ``metrics.json``, ``predictions.json``). Neither PyTorch nor numpy: the
model file is read with the pure-Python :mod:`qoin.ai.job.tensorfile`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from qoin.ai.job import tensorfile
from qoin.compute.client import BadOptions, Watcher
from qoin.errors import QoinError

MAX_SMALL_JSON: Final = 16 << 20
"""The largest metrics or predictions file read (bytes)."""
MAX_LINE: Final = 1 << 20
"""A stdout line longer than this is not parsed (shown as it is)."""


class AiClientError(QoinError):
    """An AI command cannot go on (a result that is not what the job program writes, ...)."""


# -- the live loss ---------------------------------------------------------------------------------


def parse_event(line: bytes) -> dict[str, Any] | None:
    """A job program's stdout line as its JSON object (None if it is not one)."""
    if len(line) > MAX_LINE:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return None
    return obj


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return f"{value:.4g}"


def describe(event: Mapping[str, Any]) -> str | None:
    """The line a user sees for a job program event (None: nothing to show)."""
    kind = event.get("event")
    if kind == "start":
        return (
            f"training {event.get('arch')}: {event.get('params')} parameters, "
            f"{event.get('train')} training and {event.get('test')} test samples, "
            f"{event.get('epochs')} epoch(s)"
        )
    if kind == "epoch":
        line = f"epoch {event.get('epoch')}/{event.get('epochs')}"
        for label, key in (("loss", "loss"), ("test loss", "testLoss"), ("accuracy", "accuracy")):
            shown = _number(event.get(key))
            if shown is not None:
                line += f"  {label} {shown}"
        return line
    if kind == "error":
        return f"error: {str(event.get('error'))[:2000]}"
    return None


@dataclass
class LossWatcher:
    """A :class:`~qoin.compute.client.Watcher` that shows the job program's events as lines
    (``epoch 3/10  loss 0.2134  test loss 0.25  accuracy 0.941``) and passes everything else
    on to ``inner``; it keeps the epochs seen (replica 0's live stream)."""

    inner: Watcher
    history: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _pending: bytearray = field(default_factory=bytearray)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def phase(self, phase: str, message: str) -> None:
        self.inner.phase(phase, message)

    def output(self, stream: str, data: bytes) -> None:
        if stream != "stdout":
            self.inner.output(stream, data)
            return
        with self._lock:
            self._pending += data
            *lines, rest = bytes(self._pending).split(b"\n")
            self._pending = bytearray(rest)
            if len(self._pending) > MAX_LINE:
                lines.append(bytes(self._pending))
                self._pending.clear()
            for line in lines:
                self._line(line)

    def flush(self) -> None:
        """Show a last line the job left without a newline."""
        with self._lock:
            rest = bytes(self._pending)
            self._pending.clear()
            if rest:
                self._line(rest)

    def _line(self, line: bytes) -> None:
        event = parse_event(line)
        if event is None:
            if line.strip():
                self.inner.output("stdout", line + b"\n")
            return
        if event["event"] == "epoch":
            self.history.append(event)
        elif event["event"] == "error":
            self.errors.append(str(event.get("error")))
        shown = describe(event)
        if shown is not None:
            self.inner.output("stdout", shown.encode() + b"\n")


# -- results ---------------------------------------------------------------------------------------


def model_meta(path: Path) -> dict[str, Any]:
    """The header of the model file at ``path``; :class:`AiClientError` if it is not one."""
    try:
        meta = tensorfile.read_meta(path)
    except tensorfile.TensorFileError as exc:
        raise AiClientError(f"{path} is not a model file: {exc}") from None
    if meta.get("format") != "qoin-model":
        raise AiClientError(f"{path} is not a model file (format {meta.get('format')!r})")
    return meta


def file_meta(data: bytes, what: str) -> dict[str, Any]:
    """The header of a container file's bytes ``data``; :class:`BadOptions` if it is not one."""
    try:
        return dict(tensorfile.decode(data).meta)
    except tensorfile.TensorFileError as exc:
        raise BadOptions(f"{what} is not a qoin AI file: {exc}") from None


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A small JSON object the job wrote; :class:`AiClientError` if it is not one."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SMALL_JSON + 1)
    except OSError as exc:
        raise AiClientError(f"the job left no {what} ({path}: {exc.strerror})") from None
    if len(raw) > MAX_SMALL_JSON:
        raise AiClientError(f"{path} is over {MAX_SMALL_JSON} bytes")
    try:
        obj = json.loads(raw)
    except ValueError:
        raise AiClientError(f"{path} is not JSON") from None
    if not isinstance(obj, dict):
        raise AiClientError(f"{path} is not a JSON object")
    return obj


def stdout_events(path: Path) -> list[dict[str, Any]]:
    """The job program's events in a saved stdout file (none if it cannot be read)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SMALL_JSON)
    except OSError:
        return []
    return [e for e in map(parse_event, raw.splitlines()) if e is not None]


def program_error(events: Sequence[Mapping[str, Any]]) -> str:
    """The job program's error line, if it wrote one."""
    for event in events:
        if event.get("event") == "error":
            return str(event.get("error"))[:2000]
    return ""


def predictions_text(answer: Mapping[str, Any], limit: int = 50) -> list[str]:
    """What ``infer`` prints: the generated text, or one class label per sample."""
    if answer.get("event") == "generated":
        return [str(answer.get("text", ""))]
    labels = answer.get("labels")
    predictions = answer.get("predictions")
    if not isinstance(predictions, list):
        return []
    names = labels if isinstance(labels, list) else []
    lines = []
    for index, predicted in enumerate(predictions[:limit]):
        label = names[index] if index < len(names) else predicted
        lines.append(f"{index}: {label}")
    if len(predictions) > limit:
        lines.append(f"... and {len(predictions) - limit} more")
    return lines
