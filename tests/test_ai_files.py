"""AI files: the tensor file format (round trip, canonical bytes, every rejection) and datasets and
inputs prepared from CSV, image folders, text and scikit-learn's digits (and the errors of bad
sources)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from qoin.ai import datasets
from qoin.ai.datasets import DatasetError
from qoin.ai.job import tensorfile
from qoin.ai.job.tensorfile import MAGIC, Array, TensorFile, TensorFileError

LIMIT = 1 << 24

# -- tensor files ----------------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def arrays(draw: st.DrawFn) -> list[Array]:
    chosen = draw(st.lists(names, unique=True, max_size=4))
    found = []
    for name in chosen:
        dtype = draw(st.sampled_from(sorted(tensorfile.DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        size = math.prod(shape) * tensorfile.DTYPES[dtype]
        found.append(Array(name, dtype, shape, draw(st.binary(min_size=size, max_size=size))))
    return found


@settings(max_examples=60, deadline=None)
@given(meta=st.dictionaries(st.text(max_size=10), json_values, max_size=5), contents=arrays())
def test_round_trip(meta: dict[str, object], contents: list[Array]) -> None:
    data = tensorfile.encode(meta, contents)
    assert tensorfile.encode(meta, contents) == data  # the same contents, the same bytes
    assert tensorfile.decode(data) == TensorFile(meta, tuple(contents))


@settings(max_examples=60, deadline=None)
@given(contents=arrays(), cut=st.integers(min_value=1))
def test_any_truncation_is_refused(contents: list[Array], cut: int) -> None:
    data = tensorfile.encode({"a": 1}, contents)
    with pytest.raises(TensorFileError):
        tensorfile.decode(data[: len(data) - 1 - cut % len(data)])
    with pytest.raises(TensorFileError):
        tensorfile.decode(data + b"\0")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(TensorFileError):
        tensorfile.decode(MAGIC + data if data[:1] == b"x" else data)


def test_write_and_read(tmp_path: Path) -> None:
    x = np.arange(6, dtype="<f4").reshape(2, 3)
    path = tmp_path / "f.qd"
    tensorfile.write(path, {"format": "x"}, [Array("x", "float32", (2, 3), x.tobytes())])
    found = tensorfile.read(path, LIMIT)
    got = found.get("x")
    assert got is not None and got.count == 6
    assert np.frombuffer(got.data, "<f4").tolist() == [0, 1, 2, 3, 4, 5]
    assert found.get("y") is None and found.names() == ["x"]
    assert tensorfile.read_meta(path) == {"format": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["f.qd"]
    with pytest.raises(TensorFileError, match="over the limit"):
        tensorfile.read(path, path.stat().st_size - 1)
    with pytest.raises(TensorFileError, match="cannot read"):
        tensorfile.read(tmp_path / "missing", LIMIT)


def header_file(header: object, body: bytes = b"", raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else tensorfile.canonical(header)
    return MAGIC + struct.pack(">I", len(text)) + text + body


ENTRY = {"dtype": "uint8", "length": 2, "name": "a", "offset": 0, "shape": [2]}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "magic"),
        (b"QOINTF2\n" + bytes(8), "magic"),
        (MAGIC + struct.pack(">I", (1 << 20) + 1), "over"),
        (MAGIC + struct.pack(">I", 50) + b"{}", "truncated"),
        (header_file(None, raw=b"{not json"), "not JSON"),
        (header_file([1, 2]), "exactly 'arrays' and 'meta'"),
        (header_file({"arrays": [], "meta": [], "x": 1}), "exactly"),
        (header_file({"arrays": [], "meta": 5}), "'meta' must be an object"),
        (header_file({"arrays": {}, "meta": {}}), "must be a list"),
        (header_file({"arrays": [{**ENTRY, "dtype": "float64"}], "meta": {}}, b"ab"), "bad name"),
        (header_file({"arrays": [{**ENTRY, "shape": [-2]}], "meta": {}}, b"ab"), "sizes >= 0"),
        (header_file({"arrays": [{**ENTRY, "length": 3}], "meta": {}}, b"abc"), "does not fit"),
        (header_file({"arrays": [{**ENTRY, "offset": 1}], "meta": {}}, b"ab"), "offset"),
        (header_file({"arrays": [{**ENTRY, "extra": 1}], "meta": {}}, b"ab"), "exactly"),
        (header_file({"arrays": [ENTRY, {**ENTRY, "offset": 2}], "meta": {}}, b"abcd"), "repeated"),
        (header_file({"arrays": [{**ENTRY, "name": ""}], "meta": {}}, b"ab"), "empty"),
        (header_file({"arrays": [ENTRY], "meta": {}}, b"a"), "truncated"),
        (header_file({"arrays": [ENTRY], "meta": {}}, b"abc"), "describes"),
        (header_file(None, b"ab", raw=b'{"meta": {}, "arrays": []}'), "canonical"),
        (header_file(None, raw=b'{"arrays":[],"meta":{"a":NaN}}'), "not plain JSON"),
    ],
)
def test_bad_files_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(TensorFileError, match=reason):
        tensorfile.decode(data)


@pytest.mark.parametrize(
    ("meta", "contents", "reason"),
    [
        ([], [], "must be a JSON object"),
        ({"a": float("nan")}, [], "not plain JSON"),
        ({"a": object()}, [], "not plain JSON"),
        ({}, [Array("x", "float16", (1,), b"ab")], "dtype"),
        ({}, [Array("", "uint8", (0,), b"")], "1 to"),
        ({}, [Array("x", "uint8", (2,), b"a")], "do not hold"),
        ({}, [Array("x", "uint8", (-1,), b"")], "sizes >= 0"),
        ({}, [Array("x", "uint8", (1,) * 9, b"a")], "at most"),
        ({}, [Array("x", "uint8", (1,), b"a")] * 2, "twice"),
        ({"big": "x" * (1 << 20)}, [], "over"),
    ],
)
def test_bad_contents_are_not_written(meta: object, contents: list[Array], reason: str) -> None:
    with pytest.raises(TensorFileError, match=reason):
        tensorfile.encode(meta, contents)  # type: ignore[arg-type]


# -- datasets --------------------------------------------------------------------------------------


def arrays_of(path: Path) -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    found = tensorfile.read(path, 1 << 30)
    x, y = found.get("x"), found.get("y")
    assert x is not None and y is not None
    xs = np.frombuffer(x.data, "<f4").reshape(x.shape)
    return found.meta, xs, np.frombuffer(y.data, "<i8")


def test_csv_with_and_without_header(tmp_path: Path) -> None:
    rows = [(i, i * 0.5, ["cat", "dog", "emu"][i % 3]) for i in range(10)]
    body = "".join(f"{a},{b},{label}\n" for a, b, label in rows)
    (tmp_path / "h.csv").write_text("size,weight,kind\n" + body)
    (tmp_path / "n.csv").write_text(body)
    for name in ("h", "n"):
        info = datasets.prepare(str(tmp_path / f"{name}.csv"), tmp_path / f"{name}.qd", seed=3)
        assert info.samples == 10 and info.test == 2
        meta, x, y = arrays_of(info.path)
        assert meta == {
            "classes": ["cat", "dog", "emu"],
            "format": "qoin-dataset",
            "name": name,
            "shape": [2],
            "task": "classification",
            "test": 2,
            "version": 1,
        }
        assert sorted((float(a), float(b), int(c)) for (a, b), c in zip(x, y, strict=True)) == [
            (i, i * 0.5, i % 3) for i in range(10)
        ]
    assert (tmp_path / "h.qd").read_bytes() != (tmp_path / "n.qd").read_bytes()  # names differ
    # the same source and seed: the same bytes; a label column by name, numeric labels sorted
    (tmp_path / "l.csv").write_text("label,a\n" + "".join(f"{i % 11},{i}\n" for i in range(30)))
    first = datasets.prepare(str(tmp_path / "l.csv"), tmp_path / "l1.qd", label_column="label")
    datasets.prepare(str(tmp_path / "l.csv"), tmp_path / "l2.qd", label_column="label")
    assert (tmp_path / "l1.qd").read_bytes() == (tmp_path / "l2.qd").read_bytes()
    assert first.meta["classes"] == [str(i) for i in range(11)]
    again = datasets.prepare(str(tmp_path / "l.csv"), tmp_path / "l3.qd", label_column=0, seed=1)
    assert again.meta["shape"] == [1]


def test_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "shapes"
    for label, value in (("dark", 30), ("light", 220)):
        (folder / label).mkdir(parents=True)
        for index in range(4):
            size = (6, 5)
            Image.new("RGB", size, (value, value, value + index)).save(
                folder / label / f"{index}.png"
            )
    (folder / "light" / "big.png").parent.mkdir(exist_ok=True)
    Image.new("L", (12, 10), 200).save(folder / "light" / "big.png")  # resized to the first's
    (folder / "light" / "notes.txt").write_text("not an image")
    info = datasets.prepare(str(folder), tmp_path / "img.qd", test_fraction=0.25)
    meta, x, y = arrays_of(info.path)
    assert meta["classes"] == ["dark", "light"] and meta["shape"] == [1, 5, 6]
    assert info.samples == 9 and info.test == 2
    assert x.shape == (9, 1, 5, 6) and x.min() >= 0.0 and x.max() <= 1.0
    for image, label in zip(x, y, strict=True):
        assert (image.mean() > 0.5) == (label == 1)
    sized = datasets.prepare(str(folder), tmp_path / "img4.qd", image_size=(4, 3))
    assert sized.meta["shape"] == [1, 3, 4]
    # an input for a model of that shape: one image, or a folder
    model = {"task": "classification", "shape": [1, 5, 6], "classes": ["dark", "light"]}
    one = tensorfile.decode(datasets.prepare_input(str(folder / "dark" / "0.png"), model))
    assert one.meta == {"format": "qoin-input", "task": "classification", "version": 1}
    assert one.arrays[0].shape == (1, 1, 5, 6)
    many = tensorfile.decode(datasets.prepare_input(str(folder / "light"), model))
    assert many.arrays[0].shape == (5, 1, 5, 6)


def test_text_file(tmp_path: Path) -> None:
    text = "héllo wörld, " * 20
    (tmp_path / "t.txt").write_text(text)
    info = datasets.prepare(str(tmp_path / "t.txt"), tmp_path / "t.qd", name="greetings")
    found = tensorfile.read(info.path, LIMIT)
    assert found.meta == {
        "format": "qoin-dataset",
        "name": "greetings",
        "task": "text",
        "test": info.test,
        "version": 1,
    }
    raw = found.arrays[0].data
    assert raw == text.encode() and info.samples == len(raw)
    raw[-info.test :].decode()  # held out at a character boundary
    assert abs(info.test - len(raw) * 0.2) < 3
    prompt = tensorfile.decode(datasets.prepare_input("héllo", {"task": "text"}))
    assert prompt.meta["prompt"] == "héllo" and prompt.arrays == ()
    from_file = tensorfile.decode(datasets.prepare_input(str(tmp_path / "t.txt"), {"task": "text"}))
    assert from_file.meta["prompt"] == text


def test_sklearn_digits(tmp_path: Path) -> None:
    info = datasets.prepare("sklearn:digits", tmp_path / "d.qd")
    meta, x, y = arrays_of(info.path)
    assert meta["name"] == "digits" and meta["shape"] == [1, 8, 8]
    assert meta["classes"] == [str(i) for i in range(10)]
    assert x.shape == (1797, 1, 8, 8) and x.min() == 0.0 and x.max() == 1.0
    assert sorted(set(y.tolist())) == list(range(10))
    assert info.test == 359


def test_csv_input(tmp_path: Path) -> None:
    model = {"task": "classification", "shape": [2], "classes": ["a", "b"]}
    (tmp_path / "rows.csv").write_text("x,y\n1,2\n3,4,b\n")
    found = tensorfile.decode(datasets.prepare_input(str(tmp_path / "rows.csv"), model))
    assert np.frombuffer(found.arrays[0].data, "<f4").tolist() == [1, 2, 3, 4]
    (tmp_path / "bad.csv").write_text("1,2,3,4\n")
    with pytest.raises(DatasetError, match="takes 2 features"):
        datasets.prepare_input(str(tmp_path / "bad.csv"), model)
    with pytest.raises(DatasetError, match="not grayscale images"):
        datasets.prepare_input(str(tmp_path / "a.png"), model)
    with pytest.raises(DatasetError, match="CSV file, an image"):
        datasets.prepare_input(str(tmp_path / "rows.txt"), model)
    with pytest.raises(DatasetError, match="not classification or text"):
        datasets.prepare_input("x", {"task": "other"})
    # a number beyond float32 would reach the paid job as infinity
    (tmp_path / "huge.csv").write_text("1,1e39\n")
    with pytest.raises(DatasetError, match="beyond float32"):
        datasets.prepare_input(str(tmp_path / "huge.csv"), model)


def test_inputs_for_a_model_of_absurd_shape_are_refused_unallocated(tmp_path: Path) -> None:
    """A model's meta may come from a provider: its sample shape is checked against the rows
    and the image limit before anything of that size is allocated."""
    (tmp_path / "rows.csv").write_text("1,2\n3,4\n")
    wide = {"task": "classification", "shape": [1 << 40], "classes": ["a", "b"]}
    with pytest.raises(DatasetError, match="takes 1099511627776 features"):
        datasets.prepare_input(str(tmp_path / "rows.csv"), wide)
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    huge = {"task": "classification", "shape": [1, 1 << 20, 1 << 20], "classes": ["a", "b"]}
    with pytest.raises(DatasetError, match="over 262144 pixels"):
        datasets.prepare_input(str(tmp_path / "a.png"), huge)


def test_bad_sources(tmp_path: Path) -> None:
    out = tmp_path / "out.qd"

    def refused(source: str, reason: str, **options: object) -> None:
        with pytest.raises(DatasetError, match=reason):
            datasets.prepare(source, out, **options)  # type: ignore[arg-type]

    refused("sklearn:iris", "not offered")
    refused(str(tmp_path / "missing.csv"), "no such file")
    refused("sklearn:digits", "test fraction", test_fraction=1.0)
    (tmp_path / "ragged.csv").write_text("1,2,a\n3,b\n")
    refused(str(tmp_path / "ragged.csv"), "row 2 has 2 columns")
    (tmp_path / "word.csv").write_text("1,2,a\n3,x,b\n")
    refused(str(tmp_path / "word.csv"), "row 2: 'x' is not a finite number")
    (tmp_path / "nan.csv").write_text("1,2,a\n3,nan,b\n")
    refused(str(tmp_path / "nan.csv"), "not a finite number")
    (tmp_path / "overflow.csv").write_text("1,2,a\n3,-1e39,b\n")
    refused(str(tmp_path / "overflow.csv"), "beyond float32")
    (tmp_path / "one.csv").write_text("1,a\n")
    refused(str(tmp_path / "one.csv"), "at least 2")
    (tmp_path / "empty.csv").write_text("\n\n")
    refused(str(tmp_path / "empty.csv"), "no rows")
    (tmp_path / "narrow.csv").write_text("a\nb\n")
    refused(str(tmp_path / "narrow.csv"), "at least one feature")
    (tmp_path / "named.csv").write_text("a,b\n1,2\n3,4\n")
    refused(str(tmp_path / "named.csv"), "no column named 'c'", label_column="c")
    refused(str(tmp_path / "named.csv"), "outside the 2 columns", label_column=5)
    (tmp_path / "short.txt").write_text("abc")
    refused(str(tmp_path / "short.txt"), "needs 8")
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00" * 10)
    refused(str(tmp_path / "binary.bin"), "not UTF-8")
    (tmp_path / "flat").mkdir()
    refused(str(tmp_path / "flat"), "one subfolder of images per class")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "b").mkdir()
    (tmp_path / "broken" / "a" / "x.png").write_bytes(b"not a png")
    refused(str(tmp_path / "broken"), "not an image Pillow can read")
    refused(str(tmp_path / "broken"), "image size", image_size=(0, 4))


def test_prepared_files_are_plain_json_headers(tmp_path: Path) -> None:
    info = datasets.prepare("sklearn:digits", tmp_path / "d.qd", test_fraction=0.1, seed=4)
    data = info.path.read_bytes()
    length = struct.unpack(">I", data[8:12])[0]
    header = json.loads(data[12 : 12 + length])
    assert [entry["name"] for entry in header["arrays"]] == ["x", "y"]
    assert header["meta"]["test"] == 180
