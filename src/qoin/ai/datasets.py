"""Datasets and inference inputs for AI jobs, as tensor files (docs/ai.md).

:func:`prepare` turns a source into a ``qoin-dataset`` file:

* a CSV file (``*.csv``): one sample a row, the features numbers, the label the last column (or
  ``label_column``, an index or a header name); a header row is optional (a first row whose
  features are not all numbers is one);
* a folder of images: one subfolder per class, named after it; the images made grayscale and
  resized to the first image's size (or ``image_size``); Pillow reads them;
* a text file (any other file, UTF-8): a ``text`` dataset for ``charlm``;
* ``sklearn:digits``: scikit-learn's bundled 8x8 digits, as ``[1, 8, 8]`` images scaled to 0..1.

Classification rows are shuffled with ``seed`` and the last ``test_fraction`` of them held out;
a text's last ``test_fraction`` of bytes is held out (at a character boundary).
:func:`prepare_input` makes a ``qoin-input`` file for a model from CSV rows, an image (or a
folder of them) or a prompt.

numpy is used here; Pillow and scikit-learn only inside the functions that need them (the
``ai`` extra: ``pip install 'qoin[ai]'``). PyTorch never.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qoin.ai.job import tensorfile
from qoin.ai.job.tensorfile import Array, TensorFileError
from qoin.errors import QoinError

MAX_SOURCE = 1 << 30
"""The largest CSV or text file read, in bytes."""
MAX_PROMPT = 64 * 1024
MAX_IMAGES = 200_000
MAX_PIXELS = 512 * 512
"""The most pixels of one (resized) image."""
MAX_CLASSES = 10_000
MAX_FEATURES = 1 << 20
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SKLEARN = ("digits",)
EXTRA = "pip install 'qoin[ai]'"


class DatasetError(QoinError):
    """A source cannot be made into a dataset or an input (the message says why)."""


@dataclass(frozen=True)
class DatasetInfo:
    """A prepared dataset file."""

    path: Path
    meta: dict[str, Any]
    samples: int
    """Rows (classification) or bytes of text."""
    test: int
    """Of them, held out for testing (the last ones)."""


def prepare(
    source: str,
    out: Path,
    *,
    name: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    label_column: int | str | None = None,
    image_size: tuple[int, int] | None = None,
) -> DatasetInfo:
    """Make the dataset file ``out`` from ``source`` (see the module docstring)."""
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"the test fraction must be between 0 and 1, not {test_fraction}")
    if source.startswith("sklearn:"):
        title = name or source.partition(":")[2]
        x, y, classes = _sklearn(source.partition(":")[2])
        return _write_classes(out, title, x, y, classes, test_fraction, seed)
    path = Path(source)
    title = name or path.stem or path.name
    if path.is_dir():
        x, y, classes = _image_folder(path, image_size)
        return _write_classes(out, title, x, y, classes, test_fraction, seed)
    if not path.is_file():
        raise DatasetError(f"{source}: no such file or folder (or sklearn:digits)")
    if path.suffix.lower() == ".csv":
        x, y, classes = _csv(path, label_column)
        return _write_classes(out, title, x, y, classes, test_fraction, seed)
    return _write_text(out, title, _read_text(path), test_fraction)


def _write(out: Path, meta: dict[str, Any], arrays: list[Array]) -> None:
    try:
        tensorfile.write(out, meta, arrays)
    except TensorFileError as exc:
        raise DatasetError(str(exc)) from exc


def _write_classes(
    out: Path,
    name: str,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    classes: list[str],
    test_fraction: float,
    seed: int,
) -> DatasetInfo:
    rows = int(x.shape[0])
    if rows < 2:
        raise DatasetError(f"{name}: {rows} samples; a dataset needs at least 2")
    if len(classes) > MAX_CLASSES:
        raise DatasetError(f"{name}: {len(classes)} classes, more than {MAX_CLASSES}")
    test = min(max(1, round(rows * test_fraction)), rows - 1)
    order = np.random.default_rng(seed).permutation(rows)
    x = np.ascontiguousarray(x[order], dtype="<f4")
    y = np.ascontiguousarray(y[order], dtype="<i8")
    shape = [int(dim) for dim in x.shape[1:]]
    meta = {
        "classes": classes,
        "format": "qoin-dataset",
        "name": name,
        "shape": shape,
        "task": "classification",
        "test": test,
        "version": 1,
    }
    arrays = [
        Array("x", "float32", tuple(int(d) for d in x.shape), x.tobytes()),
        Array("y", "int64", (rows,), y.tobytes()),
    ]
    _write(out, meta, arrays)
    return DatasetInfo(out, meta, rows, test)


def _write_text(out: Path, name: str, data: bytes, test_fraction: float) -> DatasetInfo:
    if len(data) < 8:
        raise DatasetError(f"{name}: the text has {len(data)} bytes; a text dataset needs 8")
    split = len(data) - max(2, round(len(data) * test_fraction))
    while 0 < split < len(data) and data[split] & 0xC0 == 0x80:
        split += 1  # not inside a character
    test = len(data) - split
    if split < 2 or test < 2:
        raise DatasetError(f"{name}: the text is too short to hold some of it out")
    meta = {"format": "qoin-dataset", "name": name, "task": "text", "test": test, "version": 1}
    _write(out, meta, [Array("text", "uint8", (len(data),), data)])
    return DatasetInfo(out, meta, len(data), test)


def _read_bytes(path: Path, limit: int = MAX_SOURCE) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise DatasetError(f"{path} is over {limit} bytes")
    return data


def _read_text(path: Path, limit: int = MAX_SOURCE) -> bytes:
    data = _read_bytes(path, limit)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path} is not UTF-8 text ({exc}); datasets are CSV (*.csv), "
            "a folder of images, a UTF-8 text file or sklearn:digits"
        ) from exc
    return data


# -- CSV -------------------------------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _csv_rows(path: Path) -> list[list[str]]:
    text = _read_text(path).decode("utf-8-sig")
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise DatasetError(f"{path}: not valid CSV: {exc}") from exc
    if not rows:
        raise DatasetError(f"{path}: the CSV has no rows")
    return rows


def _label_index(path: Path, header: list[str] | None, width: int, label: int | str | None) -> int:
    if label is None:
        return width - 1
    if isinstance(label, str) and not label.lstrip("-").isdigit():
        if header is None or label not in header:
            raise DatasetError(f"{path}: no column named {label!r} (the header: {header})")
        return header.index(label)
    index = int(label)
    if not -width <= index < width:
        raise DatasetError(f"{path}: label column {index} is outside the {width} columns")
    return index % width


def _has_header(row: list[str], label: int) -> bool:
    return any(_number(cell) is None for index, cell in enumerate(row) if index != label)


def _check_finite(x: npt.NDArray[np.float32], path: Path) -> None:
    """A number finite as text can overflow float32 (1e39): refused here, not by a paid job."""
    if not bool(np.isfinite(x).all()):
        raise DatasetError(f"{path}: a value is beyond float32's range (about 3.4e38)")


def _classes_of(labels: list[str]) -> list[str]:
    unique = set(labels)
    if all(_number(label) is not None for label in unique):
        return sorted(unique, key=lambda label: (float(label), label))
    return sorted(unique)


def _csv(
    path: Path, label: int | str | None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], list[str]]:
    rows = _csv_rows(path)
    width = len(rows[0])
    if width < 2:
        raise DatasetError(f"{path}: a row needs at least one feature and a label")
    if width - 1 > MAX_FEATURES:
        raise DatasetError(f"{path}: {width - 1} features, more than {MAX_FEATURES}")
    first = [cell.strip() for cell in rows[0]]
    probe = _label_index(path, first, width, label) if label is not None else width - 1
    header = first if _has_header(first, probe) else None
    column = _label_index(path, header, width, label)
    body = rows[1:] if header is not None else rows
    features = np.empty((len(body), width - 1), dtype=np.float32)
    labels = []
    for number, row in enumerate(body, start=2 if header is not None else 1):
        if len(row) != width:
            raise DatasetError(f"{path}: row {number} has {len(row)} columns, not {width}")
        values = []
        for index, cell in enumerate(row):
            if index == column:
                labels.append(cell.strip())
                continue
            value = _number(cell.strip())
            if value is None:
                raise DatasetError(f"{path}: row {number}: {cell!r} is not a finite number")
            values.append(value)
        with np.errstate(over="ignore"):  # beyond float32: infinity, refused below
            features[number - (2 if header is not None else 1)] = values
    _check_finite(features, path)
    classes = _classes_of(labels)
    positions = {name: position for position, name in enumerate(classes)}
    y = np.array([positions[name] for name in labels], dtype=np.int64)
    return features, y, classes


# -- images ----------------------------------------------------------------------------------------


def _pillow() -> Any:
    try:
        from PIL import Image  # noqa: PLC0415 (the ai extra, only where images are read)
    except ImportError as exc:
        raise DatasetError(f"reading images needs Pillow: {EXTRA}") from exc
    Image.MAX_IMAGE_PIXELS = 50_000_000
    return Image


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )


def _load_image(path: Path, size: tuple[int, int] | None) -> npt.NDArray[np.float32]:
    """A grayscale image as [1, H, W] in 0..1, resized to ``size`` (width, height) if given."""
    image_module = _pillow()
    try:
        with image_module.open(path) as image:
            gray = image.convert("L")
            if size is not None and gray.size != size:
                gray = gray.resize(size, image_module.Resampling.BILINEAR)
            pixels = np.asarray(gray, dtype=np.float32) / np.float32(255.0)
    except (OSError, ValueError, image_module.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: not an image Pillow can read: {exc}") from exc
    if pixels.size > MAX_PIXELS:
        raise DatasetError(
            f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, over {MAX_PIXELS}; "
            "give a smaller image size"
        )
    return pixels[None]


def _image_folder(
    folder: Path, size: tuple[int, int] | None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], list[str]]:
    if size is not None and (min(size) < 1 or size[0] * size[1] > MAX_PIXELS):
        raise DatasetError(
            f"image size {size} must be at least 1x1 and at most {MAX_PIXELS} pixels"
        )
    classes = sorted(path.name for path in folder.iterdir() if path.is_dir())
    files = [
        (index, path) for index, name in enumerate(classes) for path in _image_files(folder / name)
    ]
    if len(classes) < 2 or not files:
        raise DatasetError(
            f"{folder}: an image dataset is a folder with one subfolder of images per class "
            f"(found {len(classes)} subfolders, {len(files)} images)"
        )
    if len(files) > MAX_IMAGES:
        raise DatasetError(f"{folder}: {len(files)} images, more than {MAX_IMAGES}")
    first = _load_image(files[0][1], size)
    size = (int(first.shape[2]), int(first.shape[1]))
    x = np.empty((len(files), *first.shape), dtype=np.float32)
    x[0] = first
    for row, (_, path) in enumerate(files[1:], start=1):
        x[row] = _load_image(path, size)
    y = np.array([index for index, _ in files], dtype=np.int64)
    return x, y, classes


# -- scikit-learn ----------------------------------------------------------------------------------


def _sklearn(which: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], list[str]]:
    if which not in SKLEARN:
        raise DatasetError(f"sklearn:{which} is not offered (only {', '.join(SKLEARN)})")
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 (the ai extra)
    except ImportError as exc:
        raise DatasetError(f"sklearn:digits needs scikit-learn: {EXTRA}") from exc
    digits = load_digits()
    x = (np.asarray(digits.images, dtype=np.float32) / np.float32(16.0))[:, None]
    y = np.asarray(digits.target, dtype=np.int64)
    return x, y, [str(digit) for digit in range(10)]


# -- inference inputs ------------------------------------------------------------------------------


def prepare_input(source: str, model_meta: dict[str, Any]) -> bytes:
    """A ``qoin-input`` file for a model (its meta given): for a ``charlm``, ``source`` is a
    text file whose contents are the prompt, or else the prompt itself; for a classifier, a CSV
    file of rows (each the model's features, optionally followed by a label that is ignored), an
    image file or a folder of images (made grayscale and resized to the model's shape)."""
    task = model_meta.get("task")
    if task == "text":
        path = Path(source)
        prompt = _read_text(path, MAX_PROMPT).decode("utf-8") if path.is_file() else source
        if len(prompt.encode()) > MAX_PROMPT:
            raise DatasetError(f"the prompt is over {MAX_PROMPT} bytes")
        meta = {"format": "qoin-input", "prompt": prompt, "task": "text", "version": 1}
        return _encode(meta, [])
    if task != "classification":
        raise DatasetError(f"the model's task {task!r} is not classification or text")
    shape = model_meta.get("shape")
    if not isinstance(shape, list) or not all(isinstance(dim, int) and dim > 0 for dim in shape):
        raise DatasetError("the model's meta has no valid sample shape")
    path = Path(source)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        x = _image_input(path, shape)
    elif path.suffix.lower() == ".csv":
        x = _csv_input(path, math.prod(shape)).reshape(-1, *shape)
    else:
        raise DatasetError(f"{source}: give a CSV file, an image or a folder of images")
    meta = {"format": "qoin-input", "task": "classification", "version": 1}
    x = np.ascontiguousarray(x, dtype="<f4")
    return _encode(meta, [Array("x", "float32", tuple(int(d) for d in x.shape), x.tobytes())])


def _encode(meta: dict[str, Any], arrays: list[Array]) -> bytes:
    try:
        return tensorfile.encode(meta, arrays)
    except TensorFileError as exc:
        raise DatasetError(str(exc)) from exc


def _image_input(path: Path, shape: list[int]) -> npt.NDArray[np.float32]:
    if len(shape) != 3 or shape[0] != 1:
        raise DatasetError(f"the model takes samples of shape {shape}, not grayscale images")
    if shape[1] * shape[2] > MAX_PIXELS:
        raise DatasetError(
            f"the model takes {shape[2]}x{shape[1]} images, over {MAX_PIXELS} pixels"
        )
    files = _image_files(path) if path.is_dir() else [path]
    if not files:
        raise DatasetError(f"{path}: no images")
    if len(files) > MAX_IMAGES:
        raise DatasetError(f"{path}: more than {MAX_IMAGES} images")
    return np.stack([_load_image(file, (shape[2], shape[1])) for file in files])


def _csv_input(path: Path, features: int) -> npt.NDArray[np.float32]:
    rows = _csv_rows(path)
    if not any(_number(cell.strip()) is None for cell in rows[0][:features]):
        body = rows
    else:
        body = rows[1:]
    if not body:
        raise DatasetError(f"{path}: no rows")
    for row in body:  # before allocating what the model's (untrusted) shape says
        if len(row) not in (features, features + 1):
            raise DatasetError(
                f"{path}: a row has {len(row)} columns; the model takes {features} features "
                "(and an optional label after them)"
            )
    out = np.empty((len(body), features), dtype=np.float32)
    for number, row in enumerate(body):
        values = [_number(cell.strip()) for cell in row[:features]]
        if any(value is None for value in values):
            raise DatasetError(f"{path}: a row holds something that is not a finite number")
        with np.errstate(over="ignore"):  # beyond float32: infinity, refused below
            out[number] = values
    _check_finite(out, path)
    return out
