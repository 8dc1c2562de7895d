"""The canonical job spec (:mod:`qoin.compute.jobspec`): round trips, canonical decoding, every rule,
and input keys sealed under the job key."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qoin.compute.jobspec import (
    MAX_ARGS,
    MAX_INPUTS,
    MAX_RUNTIME,
    MAX_SPEC_SIZE,
    Determinism,
    Executor,
    Input,
    JobSpec,
    JobSpecError,
    OutputLimits,
    Resources,
    Verification,
    job_hash,
    unwrap_input_key,
    wrap_input_key,
)
from qoin.crypto.hashing import tagged_hash
from qoin.encoding.codec import DecodeError, encode_varint

DIGEST = "registry.example/tools/hasher@sha256:" + "0f" * 32
RUNTIME = "qoin-ai@" + "0123456789abcdef" * 2
SIMPLE = JobSpec(command=("sh", "-c", "echo hello"))

texts = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=20
)
env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
paths = st.lists(st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True), min_size=1, max_size=3).map(
    lambda parts: "/inputs/" + "/".join(parts)
)


@st.composite
def specs(draw: st.DrawFn) -> JobSpec:
    executor = draw(st.sampled_from(Executor))
    docker = executor is Executor.DOCKER
    first = draw(texts.filter(bool))
    command = () if docker and draw(st.booleans()) else (first, *draw(st.lists(texts, max_size=4)))
    env = draw(st.dictionaries(env_names, texts, max_size=4))
    input_paths = draw(st.lists(paths, max_size=4, unique=True))
    inputs = tuple(
        Input(draw(st.binary(min_size=32, max_size=32)), path, draw(st.binary(max_size=128)))
        for path in input_paths
    )
    gpus = draw(st.integers(0, 64))
    resources = Resources(
        draw(st.integers(1, 1024)),
        draw(st.integers(1, 1 << 50)),
        gpus,
        draw(st.sampled_from(["", "H100", "A100 80GB"])) if gpus else "",
    )
    verification = draw(st.sampled_from(Verification))
    determinism = draw(st.sampled_from(Determinism))
    if verification is Verification.REPLICATED and determinism is Determinism.NONE:
        determinism = Determinism.EXACT
    runtime = ""
    if executor is Executor.SANDBOX and draw(st.booleans()):
        runtime = draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}@[0-9a-f]{32}", fullmatch=True))
    return JobSpec(
        executor=executor,
        command=command,
        image=DIGEST if docker else "",
        runtime=runtime,
        env=tuple(env.items()),
        inputs=inputs,
        resources=resources,
        timeout=draw(st.integers(1, 30 * 86_400)),
        network=draw(st.booleans()),
        determinism=determinism,
        verification=verification,
        outputs=OutputLimits(
            draw(st.integers(0, 1 << 50)),
            draw(st.integers(0, 1 << 20)),
            draw(st.integers(0, 1 << 30)),
        ),
    )


@settings(max_examples=200, deadline=None)
@given(specs())
def test_round_trip(spec: JobSpec) -> None:
    encoded = spec.encode()
    assert len(encoded) <= MAX_SPEC_SIZE
    decoded = JobSpec.decode(encoded)
    assert decoded == spec
    assert decoded.encode() == encoded
    assert spec.job_hash == job_hash(encoded) == tagged_hash(b"QOIN/compute/job/v1", encoded)
    assert spec.replicas == spec.verification.replicas


@settings(max_examples=100, deadline=None)
@given(specs(), st.data())
def test_damaged_encodings_are_refused(spec: JobSpec, data: st.DataObject) -> None:
    encoded = spec.encode()
    with pytest.raises(DecodeError):
        JobSpec.decode(encoded + b"\x00")
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises((DecodeError, JobSpecError)):
        JobSpec.decode(encoded[:cut])


def test_simple_spec_encoding_is_pinned() -> None:
    """The encoding of docs/spec/compute.md §2, byte for byte."""
    expected = b"".join(
        (
            b"\x01\x00",  # version, sandbox
            b"\x00",  # no image
            b"\x03\x02sh\x02-c\x0aecho hello",  # argv
            b"\x00",  # no runtime
            b"\x00\x00",  # no env, no inputs
            b"\x01" + encode_varint(1 << 30) + b"\x00\x00",  # 1 CPU, 1 GiB, no GPU, no model
            encode_varint(600) + b"\x00",  # timeout, network off
            b"\x00\x00",  # exact, none
            encode_varint(1 << 30) + encode_varint(10_000) + encode_varint(16 << 20),
        )
    )
    assert SIMPLE.encode() == expected
    assert JobSpec.decode(expected) == SIMPLE
    with_runtime = replace(SIMPLE, runtime=RUNTIME)
    at = expected.index(b"echo hello") + len(b"echo hello")
    named = expected[:at] + bytes([len(RUNTIME)]) + RUNTIME.encode() + expected[at + 1 :]
    assert with_runtime.encode() == named
    assert JobSpec.decode(named) == with_runtime
    assert with_runtime.job_hash != SIMPLE.job_hash  # the hash binds the runtime


def test_a_runtime_longer_than_its_bound_is_refused_when_decoded() -> None:
    encoded = SIMPLE.encode()
    at = encoded.index(b"echo hello") + len(b"echo hello")
    long = encoded[:at] + encode_varint(MAX_RUNTIME + 1) + b"a" * (MAX_RUNTIME + 1)
    with pytest.raises(DecodeError):
        JobSpec.decode(long + encoded[at + 1 :])
    bad = encoded[:at] + b"\x05a@b c" + encoded[at + 1 :]
    with pytest.raises(JobSpecError, match="not a runtime ref"):
        JobSpec.decode(bad)


def test_non_canonical_fields_are_refused() -> None:
    encoded = SIMPLE.encode()
    for bad, reason in (
        (b"\x02" + encoded[1:], "version"),
        (encoded[:1] + b"\x03" + encoded[2:], "executor"),
        (b"\x01\x00\x00\x83\x00" + encoded[4:], "redundant"),  # a padded argv count
    ):
        with pytest.raises(DecodeError, match=reason):
            JobSpec.decode(bad)
    tail = len(encode_varint(1 << 30) + encode_varint(10_000) + encode_varint(16 << 20))
    flags = len(encoded) - tail - 3
    for offset, value, reason in (
        (0, 2, "network flag"),
        (1, 3, "determinism"),
        (2, 3, "verification"),
    ):
        damaged = bytearray(encoded)
        damaged[flags + offset] = value
        with pytest.raises(DecodeError, match=reason):
            JobSpec.decode(bytes(damaged))
    with pytest.raises(DecodeError, match="at most"):
        JobSpec.decode(bytes(MAX_SPEC_SIZE + 1))
    bad_utf8 = encoded[:4] + b"\x02\xff\xfe" + encoded[7:]
    with pytest.raises(DecodeError, match="UTF-8"):
        JobSpec.decode(bad_utf8)
    many = b"\x01\x00\x00" + encode_varint(MAX_ARGS + 1)
    with pytest.raises(DecodeError, match="exceed the bound"):
        JobSpec.decode(many)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"executor": Executor.DOCKER}, "by digest"),
        ({"executor": Executor.DOCKER, "image": "ubuntu:latest"}, "by digest"),
        ({"image": DIGEST}, "only docker jobs have an image"),
        ({"command": ()}, "needs a command"),
        ({"command": ("",)}, "needs a command"),
        ({"command": ("a\x00b",)}, "NUL"),
        ({"command": ("x" * 4097,)}, "longer than 4096"),
        ({"command": ("x",) * (MAX_ARGS + 1)}, "at most 256 arguments"),
        ({"env": (("1X", "v"),)}, "is not [A-Za-z_]"),
        ({"env": (("X", "v"), ("X", "w"))}, "named twice"),
        ({"env": (("X", "\x00"),)}, "NUL"),
        ({"inputs": (Input(bytes(32), "x"),)}, "normalised absolute path"),
        ({"inputs": (Input(bytes(32), "/inputs/../etc"),)}, "normalised absolute path"),
        ({"inputs": (Input(bytes(32), "/"),)}, "normalised absolute path"),
        ({"inputs": (Input(bytes(32), "/inputs/x/"),)}, "normalised absolute path"),
        ({"inputs": (Input(bytes(32), "/outputs/x"),)}, "lies in /outputs"),
        ({"inputs": (Input(bytes(32), "/outputs"),)}, "lies in /outputs"),
        ({"inputs": (Input(bytes(32), "/runtime"),)}, "lies in /runtime"),
        ({"inputs": (Input(bytes(32), "/runtime/bin/python"),)}, "lies in /runtime"),
        ({"runtime": "qoin-ai"}, "not a runtime ref"),
        ({"runtime": "Qoin-ai@" + "0" * 32}, "not a runtime ref"),
        ({"runtime": "qoin-ai@" + "0" * 31}, "not a runtime ref"),
        ({"runtime": "qoin-ai@" + "A" * 32}, "not a runtime ref"),
        ({"runtime": "qoin-ai@" + "0" * 32 + "\n"}, "not a runtime ref"),
        ({"runtime": "-ai@" + "0" * 32}, "not a runtime ref"),
        ({"runtime": "a" * 96 + "@" + "0" * 32}, "at most 128 bytes"),
        ({"runtime": RUNTIME, "executor": Executor.WASM}, "only sandbox jobs name a runtime"),
        (
            {"runtime": RUNTIME, "executor": Executor.DOCKER, "image": DIGEST},
            "only sandbox jobs name a runtime",
        ),
        ({"inputs": (Input(bytes(32), "/a"), Input(bytes(31), "/b"))}, "content id is 32 bytes"),
        ({"inputs": (Input(bytes(32), "/a", bytes(129)),)}, "wrapped key is at most 128"),
        ({"inputs": (Input(bytes(32), "/a"), Input(bytes(32), "/a"))}, "same path"),
        (
            {"inputs": tuple(Input(bytes(32), f"/i{n}") for n in range(MAX_INPUTS + 1))},
            "at most 64",
        ),
        ({"resources": Resources(cpus=0)}, "cpus is 1 to 1024"),
        ({"resources": Resources(memory=0)}, "memory is 1 to"),
        ({"resources": Resources(gpus=65)}, "gpus is 0 to 64"),
        ({"resources": Resources(gpu_model="H100")}, "a GPU model needs gpus > 0"),
        ({"timeout": 0}, "timeout is 1 to"),
        ({"timeout": 30 * 86_400 + 1}, "timeout is 1 to"),
        (
            {"verification": Verification.REPLICATED, "determinism": Determinism.NONE},
            "cannot be verified by replication",
        ),
        ({"outputs": OutputLimits(max_bytes=(1 << 50) + 1)}, "max output bytes"),
        ({"outputs": OutputLimits(max_files=(1 << 20) + 1)}, "max output files"),
        ({"outputs": OutputLimits(max_log_bytes=(1 << 30) + 1)}, "max log bytes"),
    ],
)
def test_rules(change: dict[str, object], reason: str) -> None:
    with pytest.raises(JobSpecError, match=reason.replace("[", r"\[")):
        replace(SIMPLE, **change)  # type: ignore[arg-type]


def test_a_spec_over_the_size_bound_is_refused() -> None:
    with pytest.raises(JobSpecError, match="exceeds 262144 bytes"):
        JobSpec(command=("x" * 4096,) * 70)


def test_docker_with_a_digest_and_no_command() -> None:
    spec = JobSpec(executor=Executor.DOCKER, image=DIGEST)
    assert JobSpec.decode(spec.encode()) == spec
    assert Executor.DOCKER.bit == 4 and Executor.SANDBOX.bit == 1
    assert Verification.REPLICATED.replicas == 2 and Verification.SPOT.replicas == 1


def test_input_keys_open_only_with_the_job_key() -> None:
    job_key, file_key, cid = os.urandom(32), os.urandom(32), os.urandom(32)
    sealed = wrap_input_key(job_key, cid, "/inputs/x", file_key)
    item = Input(cid, "/inputs/x", sealed)
    spec = replace(SIMPLE, inputs=(item,))
    assert unwrap_input_key(job_key, JobSpec.decode(spec.encode()).inputs[0]) == file_key
    with pytest.raises(JobSpecError, match="does not open"):
        unwrap_input_key(os.urandom(32), item)
    with pytest.raises(JobSpecError, match="does not open"):
        unwrap_input_key(job_key, replace(item, path="/inputs/y"))
    with pytest.raises(JobSpecError, match="does not open"):
        unwrap_input_key(job_key, replace(item, cid=bytes(32)))
    with pytest.raises(JobSpecError, match="no wrapped key"):
        unwrap_input_key(job_key, replace(item, key=b""))
    with pytest.raises(JobSpecError, match="32 bytes"):
        wrap_input_key(bytes(16), cid, "/inputs/x", file_key)
    assert wrap_input_key(job_key, cid, "/inputs/x", file_key) != sealed  # a fresh nonce
