"""Tests of the MQ hash over GF(2) (``qoin.pow.mq``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qoin.errors import QoinError
from qoin.pow.mq import (
    DEFAULT_PARAMS,
    SEED_SIZE,
    TAG_MQ_COEFFICIENTS,
    TAG_MQ_INPUT,
    MQError,
    MQParams,
    MQSystem,
    coefficient_word,
    constant_index,
    evaluate,
    evaluate_batch,
    evaluate_reference,
    expand_coefficients,
    monomial_index,
    output_int,
    validate_input,
    x_from_nonce,
)

VECTORS = Path(__file__).parent / "vectors" / "mq_vectors.json"
SEED = bytes(range(32))

variable_counts = st.sampled_from([8, 9, 13, 31, 64, 65, 96, 128])
equation_counts = st.sampled_from([64, 128])
seeds = st.binary(min_size=SEED_SIZE, max_size=SEED_SIZE)


def int_to_x(params: MQParams, value: int) -> bytes:
    """The input with ``x_i`` = bit ``i`` of ``value``."""
    return value.to_bytes(params.input_size, "little")


def x_with(params: MQParams, *indices: int) -> bytes:
    """The input with exactly the variables ``indices`` set."""
    return int_to_x(params, sum(1 << i for i in set(indices)))


def word_bytes(system: MQSystem, index: int) -> bytes:
    """The coefficient word of monomial ``index`` in output layout."""
    return coefficient_word(system, index).to_bytes(system.params.output_size, "little")


def xor(*parts: bytes) -> bytes:
    """Bytewise XOR of equal-length byte strings."""
    result = bytearray(len(parts[0]))
    for part in parts:
        for position, byte in enumerate(part):
            result[position] ^= byte
    return bytes(result)


def spec_evaluate(params: MQParams, seed: bytes, x: bytes) -> bytes:
    """An independent, bit-by-bit transcription of the specification (slow; small n only).

    Reads coefficient bits straight out of the SHAKE256 stream, one equation at a time, so it
    checks the stream layout and both bit orders without going through the module.
    """
    n, m = params.n, params.m
    monomials = [(i, j) for i in range(n) for j in range(i, n)]
    word_size = m // 8
    stream = hashlib.shake_256(TAG_MQ_COEFFICIENTS + seed).digest((len(monomials) + 1) * word_size)
    bits = [(x[i // 8] >> (i % 8)) & 1 for i in range(n)]
    y = bytearray(word_size)
    for k in range(m):
        bit = (stream[len(monomials) * word_size + k // 8] >> (k % 8)) & 1
        for t, (i, j) in enumerate(monomials):
            bit ^= bits[i] & bits[j] & (stream[t * word_size + k // 8] >> (k % 8))
        y[k // 8] |= (bit & 1) << (k % 8)
    return bytes(y)


# Parameters


@pytest.mark.parametrize(
    ("n", "m"), [(8, 64), (9, 128), (64, 64), (128, 192), (255, 256), (200, 256)]
)
def test_params_supported(n: int, m: int) -> None:
    params = MQParams(n, m)
    assert params.monomial_count == n * (n + 1) // 2 + 1
    assert params.input_size == (n + 7) // 8
    assert params.output_size == m // 8
    assert params.coefficients_size == params.monomial_count * m // 8
    assert params.lane_count == m // 64


@pytest.mark.parametrize(
    ("n", "m"),
    [(7, 64), (256, 64), (0, 64), (-8, 64), (64, 0), (64, 32), (64, 96), (64, 320), (64, 65)],
)
def test_params_unsupported(n: int, m: int) -> None:
    with pytest.raises(MQError):
        MQParams(n, m)


@pytest.mark.parametrize(("n", "m"), [(True, 64), (64.0, 64), (64, 64.0), ("64", 64)])
def test_params_reject_non_integers(n: Any, m: Any) -> None:
    with pytest.raises(MQError):
        MQParams(n, m)


def test_mq_error_is_a_qoin_error() -> None:
    assert issubclass(MQError, QoinError)


def test_default_params() -> None:
    assert MQParams(64, 64) == DEFAULT_PARAMS
    assert DEFAULT_PARAMS.monomial_count == 2081


@pytest.mark.parametrize("n", [8, 9, 13])
def test_monomial_order(n: int) -> None:
    params = MQParams(n, 64)
    order = [(i, j) for i in range(n) for j in range(i, n)]
    assert [monomial_index(params, i, j) for i, j in order] == list(range(len(order)))
    assert constant_index(params) == len(order) == params.monomial_count - 1


@pytest.mark.parametrize(("i", "j"), [(1, 0), (-1, 3), (0, 8), (8, 8)])
def test_monomial_index_out_of_range(i: int, j: int) -> None:
    with pytest.raises(MQError):
        monomial_index(MQParams(8, 64), i, j)


# Coefficient expansion


def test_expand_is_the_shake256_stream() -> None:
    params = MQParams(13, 128)
    system = expand_coefficients(params, SEED)
    expected = hashlib.shake_256(TAG_MQ_COEFFICIENTS + SEED).digest(params.coefficients_size)
    assert system.coefficients == expected
    assert system.params == params
    assert coefficient_word(system, 0) == int.from_bytes(expected[:16], "little")
    assert word_bytes(system, constant_index(params)) == expected[-16:]


def test_expand_is_deterministic() -> None:
    first = expand_coefficients(DEFAULT_PARAMS, SEED)
    second = expand_coefficients(DEFAULT_PARAMS, bytes(SEED))
    assert first == second
    assert hash(first) == hash(second)
    assert np.array_equal(first.words, second.words)


def test_expand_depends_on_every_seed_byte() -> None:
    params = MQParams(8, 64)
    base = expand_coefficients(params, SEED).coefficients
    for position in range(SEED_SIZE):
        for flip in (0x01, 0x80):
            seed = bytearray(SEED)
            seed[position] ^= flip
            assert expand_coefficients(params, bytes(seed)).coefficients != base


def test_expand_depends_on_params() -> None:
    small = expand_coefficients(MQParams(8, 64), SEED)
    wide = expand_coefficients(MQParams(8, 128), SEED)
    # Same stream, different word boundaries: the prefix agrees, the systems differ.
    assert wide.coefficients.startswith(small.coefficients)
    assert small != wide


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_expand_rejects_bad_seed_length(size: int) -> None:
    with pytest.raises(MQError):
        expand_coefficients(DEFAULT_PARAMS, bytes(size))


@pytest.mark.parametrize("delta", [-1, 1, -8])
def test_system_rejects_bad_coefficient_length(delta: int) -> None:
    params = MQParams(8, 64)
    with pytest.raises(MQError):
        MQSystem(params, bytes(params.coefficients_size + delta))


def test_system_arrays_are_read_only() -> None:
    system = expand_coefficients(MQParams(9, 128), SEED)
    assert system.words.shape == (system.params.monomial_count, 2)
    assert not system.words.flags.writeable
    assert all(not matrix.flags.writeable for matrix in system.upper)
    with pytest.raises(ValueError, match="read-only"):
        system.upper[0][0, 0] = 1


def test_system_copies_mutable_coefficients() -> None:
    params = MQParams(8, 64)
    buffer = bytearray(expand_coefficients(params, SEED).coefficients)
    system = MQSystem(params, buffer)
    x = x_from_nonce(params, b"n")
    before = evaluate(system, x)
    buffer[:] = bytes(len(buffer))
    assert evaluate(system, x) == before == evaluate_reference(system, x)


# Inputs and outputs


@pytest.mark.parametrize("n", [8, 9, 13, 64, 65, 255])
def test_x_from_nonce(n: int) -> None:
    params = MQParams(n, 64)
    x = x_from_nonce(params, b"nonce")
    digest = hashlib.shake_256(TAG_MQ_INPUT + b"nonce").digest(params.input_size)
    assert len(x) == params.input_size
    assert x[:-1] == digest[:-1]
    mask = 0xFF if n % 8 == 0 else (1 << (n % 8)) - 1
    assert x[-1] == digest[-1] & mask
    validate_input(params, x)
    assert x_from_nonce(params, b"nonce") == x != x_from_nonce(params, b"nonce2")


def test_output_int_is_little_endian() -> None:
    assert output_int(b"\x01" + bytes(7)) == 1  # y_0
    assert output_int(b"\x80" + bytes(7)) == 1 << 7  # y_7
    assert output_int(bytes(1) + b"\x01" + bytes(6)) == 1 << 8  # y_8
    assert output_int(bytes(7) + b"\x80") == 1 << 63  # y_63


@pytest.mark.parametrize("evaluator", [evaluate, evaluate_reference])
@pytest.mark.parametrize(("n", "size"), [(64, 7), (64, 9), (13, 1), (13, 3), (8, 0)])
def test_evaluate_rejects_bad_input_length(evaluator: Any, n: int, size: int) -> None:
    system = expand_coefficients(MQParams(n, 64), SEED)
    with pytest.raises(MQError):
        evaluator(system, bytes(size))


@pytest.mark.parametrize("evaluator", [evaluate, evaluate_reference])
@pytest.mark.parametrize(("n", "last"), [(13, 0x20), (13, 0x80), (9, 0x02), (255, 0x80)])
def test_evaluate_rejects_stray_high_bits(evaluator: Any, n: int, last: int) -> None:
    params = MQParams(n, 64)
    system = expand_coefficients(params, SEED)
    with pytest.raises(MQError):
        evaluator(system, bytes(params.input_size - 1) + bytes([last]))
    # The highest valid bit is accepted.
    evaluator(system, x_with(params, n - 1))


# The evaluators


PARAMS = [MQParams(8, 64), MQParams(13, 128), MQParams(64, 64), MQParams(65, 192)]


@pytest.mark.parametrize("params", PARAMS)
def test_zero_input_gives_the_constant(params: MQParams) -> None:
    system = expand_coefficients(params, SEED)
    constant = word_bytes(system, constant_index(params))
    zero = bytes(params.input_size)
    assert evaluate_reference(system, zero) == constant
    assert evaluate(system, zero) == constant


@pytest.mark.parametrize("params", PARAMS)
def test_single_variable_gives_linear_term_and_constant(params: MQParams) -> None:
    system = expand_coefficients(params, SEED)
    constant = word_bytes(system, constant_index(params))
    for i in range(params.n):
        x = x_with(params, i)
        expected = xor(word_bytes(system, monomial_index(params, i, i)), constant)
        assert evaluate(system, x) == expected
        assert evaluate_reference(system, x) == expected


@pytest.mark.parametrize("params", PARAMS)
def test_two_variables_add_their_product(params: MQParams) -> None:
    system = expand_coefficients(params, SEED)
    constant = word_bytes(system, constant_index(params))
    for i, j in [(0, 1), (0, params.n - 1), (2, 5), (params.n - 2, params.n - 1)]:
        expected = xor(
            word_bytes(system, monomial_index(params, i, i)),
            word_bytes(system, monomial_index(params, j, j)),
            word_bytes(system, monomial_index(params, i, j)),
            constant,
        )
        assert evaluate(system, x_with(params, i, j)) == expected
        assert evaluate_reference(system, x_with(params, i, j)) == expected


@pytest.mark.parametrize("params", [MQParams(8, 64), MQParams(9, 128), MQParams(13, 64)])
def test_reference_matches_bitwise_spec(params: MQParams) -> None:
    system = expand_coefficients(params, SEED)
    for nonce in (b"a", b"b", b"c"):
        x = x_from_nonce(params, nonce)
        assert evaluate_reference(system, x) == spec_evaluate(params, SEED, x)


@settings(max_examples=60, deadline=None)
@given(n=variable_counts, m=equation_counts, seed=seeds, data=st.data())
def test_evaluate_matches_reference(n: int, m: int, seed: bytes, data: st.DataObject) -> None:
    params = MQParams(n, m)
    system = expand_coefficients(params, seed)
    value = data.draw(
        st.one_of(st.integers(0, (1 << n) - 1), st.sampled_from([0, (1 << n) - 1])), label="x"
    )
    x = int_to_x(params, value)
    y = evaluate(system, x)
    assert len(y) == params.output_size
    assert y == evaluate_reference(system, x)


@pytest.mark.parametrize(("n", "m"), [(200, 192), (255, 256), (127, 256)])
def test_evaluate_matches_reference_large(n: int, m: int) -> None:
    params = MQParams(n, m)
    system = expand_coefficients(params, SEED)
    for nonce in (b"0", b"1"):
        x = x_from_nonce(params, nonce)
        assert evaluate(system, x) == evaluate_reference(system, x)


@settings(max_examples=30, deadline=None)
@given(n=variable_counts, seed=seeds, data=st.data())
def test_evaluate_is_quadratic(n: int, seed: bytes, data: st.DataObject) -> None:
    # D(a, b) = P(a ^ b) ^ P(a) ^ P(b) ^ P(0) is bilinear for every quadratic P over GF(2).
    params = MQParams(n, 64)
    system = expand_coefficients(params, seed)
    a, b, c = (data.draw(st.integers(0, (1 << n) - 1)) for _ in range(3))

    def p(value: int) -> bytes:
        return evaluate(system, int_to_x(params, value))

    def d(u: int, v: int) -> bytes:
        return xor(p(u ^ v), p(u), p(v), p(0))

    assert d(a ^ c, b) == xor(d(a, b), d(c, b))
    assert d(a, b) == d(b, a)


# Batches


@pytest.mark.parametrize(
    ("params", "count"),
    [
        (MQParams(8, 64), 0),
        (MQParams(8, 64), 1),
        (MQParams(13, 128), 63),
        (MQParams(64, 64), 64),
        (MQParams(65, 192), 130),
        (MQParams(128, 128), 257),
        (MQParams(255, 256), 70),
    ],
)
def test_evaluate_batch_matches_evaluate(params: MQParams, count: int) -> None:
    system = expand_coefficients(params, SEED)
    inputs = [x_from_nonce(params, index.to_bytes(4, "little")) for index in range(count)]
    xs = np.frombuffer(b"".join(inputs), dtype=np.uint8).reshape(count, params.input_size)
    ys = evaluate_batch(system, xs)
    assert ys.shape == (count, params.output_size)
    assert ys.dtype == np.uint8
    assert [row.tobytes() for row in ys] == [evaluate(system, x) for x in inputs]


def test_evaluate_batch_spans_blocks() -> None:
    # More inputs than one internal block holds (2**20 // T words of 64 inputs).
    params = MQParams(255, 64)
    system = expand_coefficients(params, SEED)
    count = 64 * (2**20 // params.monomial_count) + 5
    rng = np.random.default_rng(7)
    xs = rng.integers(0, 256, size=(count, params.input_size), dtype=np.uint8)
    xs[:, -1] &= 0x7F
    ys = evaluate_batch(system, xs)
    for row in [0, 1, count // 2, count - 6, count - 5, count - 1]:
        assert ys[row].tobytes() == evaluate(system, xs[row].tobytes())


def test_evaluate_batch_rejects_bad_inputs() -> None:
    params = MQParams(13, 64)
    system = expand_coefficients(params, SEED)
    with pytest.raises(MQError):
        evaluate_batch(system, np.zeros((4, 3), dtype=np.uint8))
    with pytest.raises(MQError):
        evaluate_batch(system, np.zeros((4, 2), dtype=np.uint16))
    with pytest.raises(MQError):
        evaluate_batch(system, np.zeros(2, dtype=np.uint8))
    stray = np.zeros((4, 2), dtype=np.uint8)
    stray[3, 1] = 0x20
    with pytest.raises(MQError):
        evaluate_batch(system, stray)


# Known answers


def load_vectors() -> list[dict[str, Any]]:
    document = json.loads(VECTORS.read_text())
    vectors: list[dict[str, Any]] = document["vectors"]
    return vectors


def test_vector_file_covers_default_and_other_params() -> None:
    shapes = [(v["params"]["n"], v["params"]["m"]) for v in load_vectors()]
    assert shapes.count((64, 64)) >= 8
    assert len(set(shapes)) >= 5


@pytest.mark.parametrize("vector", load_vectors(), ids=lambda vector: vector["name"])
def test_known_answer(vector: dict[str, Any]) -> None:
    params = MQParams(vector["params"]["n"], vector["params"]["m"])
    system = expand_coefficients(params, bytes.fromhex(vector["seed"]))
    x = bytes.fromhex(vector["x"])
    y = bytes.fromhex(vector["y"])
    if vector["nonce"] is not None:
        assert x_from_nonce(params, bytes.fromhex(vector["nonce"])) == x
    assert evaluate_reference(system, x) == y
    assert evaluate(system, x) == y
    xs = np.frombuffer(x, dtype=np.uint8).reshape(1, -1)
    assert evaluate_batch(system, xs)[0].tobytes() == y
