"""The result manifest, its root and the outputs archive (docs/spec/compute.md §4.5): round
trips, any changed byte caught, hostile archives refused."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qoin.compute.executors import RunResult, StopReason
from qoin.compute.executors.tree import prune, remove_tree, tree_usage
from qoin.compute.jobspec import OutputLimits
from qoin.compute.outputs import (
    MAGIC,
    STDOUT,
    TAG_RESULT,
    FileEntry,
    Manifest,
    OutputsError,
    file_digest,
    pack,
    result_root,
    scan,
    unpack,
)
from qoin.crypto.hashing import tagged_hash
from qoin.encoding.codec import Writer, encode_varint

LIMITS = OutputLimits(max_bytes=1 << 20, max_files=100, max_log_bytes=1 << 16)
EXITED = RunResult(StopReason.EXITED, 0, "exited with status 0", 0.1, 0.1, 0.01)

names = st.sampled_from(["a", "b", "ab", "é", "x.txt", "dir", "Z", "a-b", "a b"])
paths = st.lists(names, min_size=1, max_size=3).map("/".join)


def _no_file_under_file(tree: dict[str, bytes]) -> bool:
    return not any(
        "/".join(path.split("/")[:depth]) in tree
        for path in tree
        for depth in range(1, path.count("/") + 1)
    )


trees = st.dictionaries(paths, st.binary(max_size=300), max_size=8).filter(_no_file_under_file)
digests = st.binary(min_size=32, max_size=32)
entries = st.builds(FileEntry, paths, st.integers(0, 1 << 40), digests)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    files = draw(st.lists(entries, max_size=6, unique_by=lambda entry: entry.path))
    files.sort(key=lambda entry: entry.path.encode())
    chosen = {entry.path for entry in files}
    files = [
        entry
        for entry in files
        if not any(
            "/".join(entry.path.split("/")[:depth]) in chosen
            for depth in range(1, entry.path.count("/") + 1)
        )
    ]
    reason = draw(st.sampled_from(list(StopReason)))
    exit_code = draw(st.none() | st.integers(0, (1 << 32) - 1))
    stdout = FileEntry(STDOUT, draw(st.integers(0, 1 << 30)), draw(digests))
    return Manifest(reason, exit_code, stdout, tuple(files))


def _write_tree(root: Path, tree: dict[str, bytes]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for path, data in tree.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _read_tree(root: Path) -> dict[str, bytes]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def _archive(
    tree: dict[str, bytes], stdout: bytes, result: RunResult = EXITED
) -> tuple[bytes, Manifest]:
    with tempfile.TemporaryDirectory() as tmp:
        outputs = Path(tmp) / "outputs"
        _write_tree(outputs, tree)
        out_file = Path(tmp) / "stdout"
        out_file.write_bytes(stdout)
        manifest = scan(outputs, out_file, result, LIMITS)
        dest = Path(tmp) / "archive"
        pack(manifest, outputs, out_file, dest)
        return dest.read_bytes(), manifest


# -- round trips ----------------------------------------------------------------------------------


@given(manifests())
def test_manifest_round_trip(manifest: Manifest) -> None:
    encoded = manifest.encode()
    assert Manifest.decode(encoded) == manifest
    assert result_root(manifest) == tagged_hash(TAG_RESULT, encoded) == manifest.root


@settings(max_examples=40, deadline=None)
@given(trees, st.binary(max_size=200))
def test_scan_pack_unpack_round_trip(tree: dict[str, bytes], stdout: bytes) -> None:
    archive, manifest = _archive(tree, stdout)
    assert [entry.path for entry in manifest.files] == sorted(tree, key=str.encode)
    assert manifest.stdout == FileEntry(STDOUT, len(stdout), file_digest(stdout))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        saved = Path(tmp) / "stdout"
        unpacked = unpack(archive, out, manifest.root, limits=LIMITS, stdout=saved)
        assert unpacked == manifest
        assert _read_tree(out) == tree
        assert saved.read_bytes() == stdout


@settings(max_examples=80, deadline=None)
@given(trees, st.binary(max_size=50), st.data())
def test_any_changed_byte_is_caught(
    tree: dict[str, bytes], stdout: bytes, data: st.DataObject
) -> None:
    archive, manifest = _archive(tree, stdout)
    index = data.draw(st.integers(0, len(archive) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(archive)
    damaged[index] ^= flip
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(OutputsError):
        unpack(bytes(damaged), Path(tmp) / "out", manifest.root)
    cut = data.draw(st.integers(0, len(archive) - 1))
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(OutputsError):
        unpack(archive[:cut], Path(tmp) / "out", manifest.root)
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(OutputsError):
            unpack(archive + b"\x00", Path(tmp) / "out", manifest.root)
        assert _read_tree(Path(tmp) / "out") == {}  # what was written is removed


@given(manifests(), st.data())
def test_any_changed_manifest_byte_changes_the_root_or_fails(
    manifest: Manifest, data: st.DataObject
) -> None:
    encoded = bytearray(manifest.encode())
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    try:
        changed = Manifest.decode(bytes(encoded))
    except OutputsError:
        return
    assert changed.root != manifest.root


# -- scanning -------------------------------------------------------------------------------------


def test_scan_skips_links_and_special_files(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    _write_tree(outputs, {"kept": b"yes", "sub/also": b"too"})
    (outputs / "link").symlink_to("/etc/passwd")
    (outputs / "sub" / "dirlink").symlink_to(tmp_path)
    os.mkfifo(outputs / "fifo")
    manifest = scan(outputs, tmp_path / "no-stdout", EXITED, LIMITS)
    assert [entry.path for entry in manifest.files] == ["kept", "sub/also"]
    assert manifest.stdout == FileEntry(STDOUT, 0, file_digest(b""))


def test_output_limit_results_keep_no_files(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    _write_tree(outputs, {"big": b"x" * 100})
    over = RunResult(StopReason.OUTPUT, None, "over", 0.1, 0.1, 0.01)
    manifest = scan(outputs, tmp_path / "stdout", over, LIMITS)
    assert manifest.files == ()
    assert manifest.reason is StopReason.OUTPUT
    assert manifest.exit_code is None


def test_scan_refuses_outputs_over_the_limits(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    _write_tree(outputs, {"a": b"x" * 60, "b": b"y" * 60})
    with pytest.raises(OutputsError, match="limit of 100"):
        scan(outputs, tmp_path / "stdout", EXITED, OutputLimits(100, 10, 10))
    with pytest.raises(OutputsError, match="limit of 1"):
        scan(outputs, tmp_path / "stdout", EXITED, OutputLimits(1000, 1, 10))
    (tmp_path / "stdout").write_bytes(b"z" * 11)
    with pytest.raises(OutputsError, match="stdout"):
        scan(outputs, tmp_path / "stdout", EXITED, OutputLimits(1000, 10, 10))


def test_pack_catches_a_file_changed_after_the_scan(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    _write_tree(outputs, {"a": b"before"})
    manifest = scan(outputs, tmp_path / "stdout", EXITED, LIMITS)
    (outputs / "a").write_bytes(b"after!")
    with pytest.raises(OutputsError, match="changed"):
        pack(manifest, outputs, tmp_path / "stdout", tmp_path / "archive")
    assert not (tmp_path / "archive").exists()


# -- hostile archives -----------------------------------------------------------------------------


def _raw_archive(files: list[tuple[bytes, bytes]], stdout: bytes = b"") -> tuple[bytes, bytes]:
    """An archive whose manifest lists ``files`` (raw path, content) exactly as given (no rule
    checked), and the root of that manifest."""
    writer = Writer().u8(1).var_bytes(b"exited", 32).u8(1).varint(0)
    writer.varint(len(stdout)).fixed(file_digest(stdout), 32).varint(len(files))
    for path, content in files:
        writer.var_bytes(path, 4096).varint(len(content)).fixed(file_digest(content), 32)
    encoded = writer.bytes()
    body = MAGIC + encode_varint(len(encoded)) + encoded + stdout
    body += b"".join(content for _, content in files)
    return body, tagged_hash(TAG_RESULT, encoded)


@pytest.mark.parametrize(
    "files",
    [
        [(b"../evil", b"x")],
        [(b"a/../../evil", b"x")],
        [(b"/tmp/evil", b"x")],
        [(b"a//b", b"x")],
        [(b"./a", b"x")],
        [(b"", b"x")],
        [(b"a\x00b", b"x")],
        [(b"\xff\xfe", b"x")],
        [(b"a", b"x"), (b"a", b"y")],
        [(b"b", b"x"), (b"a", b"y")],
        [(b"a", b"x"), (b"a/b", b"y")],
    ],
    ids=[
        "dotdot",
        "deep-dotdot",
        "absolute",
        "empty-part",
        "dot",
        "empty",
        "nul",
        "not-utf8",
        "duplicate",
        "unsorted",
        "file-under-file",
    ],
)
def test_hostile_paths_are_refused(tmp_path: Path, files: list[tuple[bytes, bytes]]) -> None:
    archive, root = _raw_archive(files)
    out = tmp_path / "deep" / "out"
    with pytest.raises(OutputsError):
        unpack(archive, out, root)
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "deep" / "evil").exists()
    assert not out.exists() or _read_tree(out) == {}


def test_wrong_root_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive, root = _raw_archive([(b"a", b"content")])
    with pytest.raises(OutputsError, match="root"):
        unpack(archive, tmp_path / "out", bytes(32))
    assert not (tmp_path / "out").exists()
    assert unpack(archive, tmp_path / "out", root).files[0].path == "a"


def test_archives_over_the_limits_are_refused(tmp_path: Path) -> None:
    archive, root = _raw_archive([(b"a", b"x" * 50), (b"b", b"y" * 50)], stdout=b"out")
    for limits in (OutputLimits(99, 10, 10), OutputLimits(1000, 1, 10), OutputLimits(1000, 10, 2)):
        with pytest.raises(OutputsError, match="over the limit"):
            unpack(archive, tmp_path / "out", root, limits=limits)
        assert not (tmp_path / "out").exists()


def test_a_link_in_the_way_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").symlink_to(elsewhere)
    (out / "f").symlink_to(elsewhere / "target")
    archive, root = _raw_archive([(b"a/b", b"x")])
    with pytest.raises(OutputsError, match="in the way"):
        unpack(archive, out, root)
    archive, root = _raw_archive([(b"f", b"x")])
    with pytest.raises(OutputsError, match="link"):
        unpack(archive, out, root)
    assert list(elsewhere.iterdir()) == []


def test_a_lying_size_is_caught(tmp_path: Path) -> None:
    archive, root = _raw_archive([(b"a", b"abc"), (b"b", b"def")])
    with pytest.raises(OutputsError):
        unpack(archive[:-1], tmp_path / "out", root)
    assert _read_tree(tmp_path / "out") == {}
    with pytest.raises(OutputsError, match="magic"):
        unpack(b"NOTQOIN!" + archive[8:], tmp_path / "out", root)


def test_manifest_rules() -> None:
    stdout = FileEntry(STDOUT, 0, file_digest(b""))
    good = FileEntry("a", 1, bytes(32))
    with pytest.raises(OutputsError, match="exit code"):
        Manifest(StopReason.EXITED, -1, stdout)
    with pytest.raises(OutputsError, match="stdout"):
        Manifest(StopReason.EXITED, 0, FileEntry("other", 0, bytes(32)))
    with pytest.raises(OutputsError, match="digest"):
        Manifest(StopReason.EXITED, 0, stdout, (FileEntry("a", 1, b"short"),))
    with pytest.raises(OutputsError, match="increase"):
        Manifest(StopReason.EXITED, 0, stdout, (good, good))
    with pytest.raises(OutputsError, match="unknown stop reason"):
        Manifest.decode(Writer().u8(1).var_bytes(b"bogus", 32).bytes())


# -- hostile trees and archives (what a job or a provider could leave) ----------------------------


def _deep(top: Path, depth: int, leaf: bytes = b"x") -> None:
    """A chain of ``depth`` directories ``d`` under ``top`` with a file at its bottom (made
    through descriptors: its path is far longer than ``PATH_MAX``)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        leaf_fd = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf_fd, leaf)
        os.close(leaf_fd)
    finally:
        os.close(fd)


def test_scan_takes_only_paths_a_result_can_list(tmp_path: Path) -> None:
    """Names with a newline or 255 bytes long are results; names that are not UTF-8, paths over
    1024 bytes and a tree deeper than ``PATH_MAX`` are skipped (never a failure); the tree
    helpers see the deep tree as breaking the path rule, prune it and remove it without
    recursion."""
    outputs = tmp_path / "outputs"
    long_name = "n" * 255
    _write_tree(outputs, {"new\nline": b"1", long_name: b"2", "é": b"3"})
    (outputs / os.fsdecode(b"bad\xffname")).write_bytes(b"4")
    too_long = outputs / "/".join(["p" * 250] * 5) / "f"  # 1256 bytes
    too_long.parent.mkdir(parents=True)
    too_long.write_bytes(b"5")
    (outputs / "deep").mkdir()
    try:
        _deep(outputs / "deep", 1500)
        manifest = scan(outputs, tmp_path / "stdout", EXITED, LIMITS)
        assert [entry.path for entry in manifest.files] == sorted(
            ["new\nline", long_name, "é"], key=str.encode
        )
        usage = tree_usage(outputs)
        assert usage.problem is not None and "longer than 1024 bytes" in usage.problem
        assert prune(outputs) >= 2
        assert tree_usage(outputs).problem is None
        (outputs / "again").mkdir()
        _deep(outputs / "again", 1500)
    finally:
        remove_tree(outputs)  # a recursive removal (pytest's own) could not
    assert not outputs.exists()


def test_pack_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    """A FIFO put where a scanned file was (a reader that opened it would wait forever): the
    pack fails at once."""
    outputs = tmp_path / "outputs"
    _write_tree(outputs, {"a": b"content"})
    manifest = scan(outputs, tmp_path / "stdout", EXITED, LIMITS)
    (outputs / "a").unlink()
    os.mkfifo(outputs / "a")
    failures: list[BaseException] = []

    def attempt() -> None:
        try:
            pack(manifest, outputs, tmp_path / "stdout", tmp_path / "archive")
        except OutputsError as exc:
            failures.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the pack blocked on a FIFO"
    assert failures and "regular file" in str(failures[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a tree for another user (needs root)")
def test_a_provider_that_is_not_root_reads_what_the_job_made_unreadable() -> None:
    """A job that runs as the provider's own user (a sandbox provider that is not root) makes a
    file unreadable and a directory writable but not listable: the provider gives the owner's
    permissions back, so its walk sees every byte and its scan the same result a root provider
    gets."""
    top = Path(tempfile.mkdtemp(prefix="qoin-not-root-"))
    try:
        outputs = top / "outputs"
        _write_tree(outputs, {"locked": b"secret result", "hidden/big": b"x" * 5000, "ok": b"1"})
        (outputs / "locked").chmod(0)
        (outputs / "hidden").chmod(0o300)
        for path in (top, *top.rglob("*")):
            os.chown(path, 65534, 65534, follow_symlinks=False)
        top.chmod(0o700)
        as_root = scan(outputs, top / "stdout", EXITED, LIMITS)
        (outputs / "hidden").chmod(0o300)
        (outputs / "locked").chmod(0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the provider's user, not root
            code = 1
            try:
                os.close(read)
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                size = tree_usage(outputs).size
                root = scan(outputs, top / "stdout", EXITED, LIMITS).root
                os.write(write, f"{size} {root.hex()}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read, "rb") as said:
            answer = said.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, answer
        assert answer == f"{5000 + 13 + 1} {as_root.root.hex()}"
        assert [entry.path for entry in as_root.files] == ["hidden/big", "locked", "ok"]
    finally:
        shutil.rmtree(top)


def test_unpack_writes_names_that_look_like_its_temporary_files(tmp_path: Path) -> None:
    """A result holding both ``x`` and a name a temporary file of ``x`` could have, and a
    name of 255 bytes: every file arrives whole."""
    files = [(b".x.qoin-part", b"first"), (b"n" * 255, b"long"), (b"x", b"second")]
    archive, root = _raw_archive(files)
    unpack(archive, tmp_path / "out", root)
    assert _read_tree(tmp_path / "out") == {
        ".x.qoin-part": b"first",
        "n" * 255: b"long",
        "x": b"second",
    }


def test_unpack_bounds_what_a_lying_archive_can_make_it_do(tmp_path: Path) -> None:
    """A manifest length beyond what the limits allow is refused before it is read (no
    allocation follows a claim); a failure removes the directories made for the files too."""
    claim = MAGIC + encode_varint(1 << 40) + b"\x00" * 64
    with pytest.raises(OutputsError, match="over the"):
        unpack(claim, tmp_path / "out", bytes(32), limits=LIMITS)
    assert not (tmp_path / "out").exists()
    archive, root = _raw_archive([(b"sub/dir/a", b"abc"), (b"sub/b", b"def")])
    with pytest.raises(OutputsError):
        unpack(archive[:-1], tmp_path / "deep" / "out", root)
    assert not (tmp_path / "deep").exists()
