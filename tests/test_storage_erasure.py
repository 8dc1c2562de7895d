"""Erasure coding (docs/spec/storage.md §2): any k of n shards rebuild the file.

* hypothesis: random n <= 8, k < n, sizes from 0 bytes up (1 byte included): every shard is
  ``shard_size_for`` bytes, the first k are the padded file's pieces, any k-subset decodes to the
  file and rebuilds every shard byte for byte;
* the field and the Cauchy rows are the spec's (checked by hand-written arithmetic);
* wrong inputs: fewer than k shards, shards of different or wrong sizes, bad indices, bad n/k,
  inconsistent shards (non-zero padding) all raise :class:`ErasureError` with the reason.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qoin.storage import erasure
from qoin.storage.erasure import ErasureError, decode, encode, rebuild
from qoin.storage.merkle import shard_size_for

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def gf_mul_slow(a: int, b: int) -> int:
    """Carry-less multiplication reduced by x^8 + x^4 + x^3 + x^2 + 1, bit by bit."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11D
        b >>= 1
    return product


@st.composite
def codes(draw: st.DrawFn) -> tuple[int, int, int, bytes]:
    n = draw(st.integers(2, 8))
    k = draw(st.integers(1, n - 1))
    leaf_size = draw(st.sampled_from([32, 64, 256]))
    size = draw(st.one_of(st.sampled_from([0, 1, 2, 31, 32, 33]), st.integers(0, 20_000)))
    seed = draw(st.binary(min_size=4, max_size=4))
    return n, k, leaf_size, hashlib.shake_256(seed).digest(size)


@FAST
@given(codes(), st.data())
def test_any_k_of_n_rebuild(code: tuple[int, int, int, bytes], data: st.DataObject) -> None:
    n, k, leaf_size, content = code
    shards = encode(content, n, k, leaf_size)
    shard_size = shard_size_for(len(content), k, leaf_size)
    assert len(shards) == n
    assert all(len(shard) == shard_size for shard in shards)
    padded = content + bytes(k * shard_size - len(content))
    assert b"".join(shards[:k]) == padded  # systematic
    if k == 1:
        assert all(shard == padded for shard in shards)
    index = data.draw(st.integers(0, n - 1))
    assert erasure.encode_shard(content, n, k, leaf_size, index) == shards[index]
    subsets = list(itertools.combinations(range(n), k))
    chosen = data.draw(st.lists(st.sampled_from(subsets), min_size=1, max_size=6, unique=True))
    for subset in chosen:
        given_shards = {index: shards[index] for index in subset}
        assert decode(given_shards, n, k, len(content)) == content
        for index in range(n):
            assert rebuild(given_shards, n, k, index) == shards[index]
    # more than k shards are fine too
    assert decode(dict(enumerate(shards)), n, k, len(content)) == content


def test_every_subset_of_a_larger_code() -> None:
    content = hashlib.shake_256(b"every subset").digest(5_000)
    n, k = 7, 4
    shards = encode(content, n, k, 32)
    for subset in itertools.combinations(range(n), k):
        given_shards = {index: shards[index] for index in subset}
        assert decode(given_shards, n, k, len(content)) == content
        assert [rebuild(given_shards, n, k, i) for i in range(n)] == shards


def test_field_and_matrix_are_the_spec() -> None:
    for a in range(256):
        for b in (0, 1, 2, 3, 0x53, 0x8E, 0xFF, a):
            assert erasure.gf_mul(a, b) == gf_mul_slow(a, b)
        if a:
            assert gf_mul_slow(a, erasure.gf_inv(a)) == 1
    assert erasure.coding_row(1, 3) == [0, 1, 0]
    assert erasure.coding_row(4, 3) == [erasure.gf_inv(4 ^ j) for j in range(3)]
    # parity byte = sum_j C[i][j] * data_j, with C[i][j] = 1 / ((k + i) XOR j)
    shards = encode(bytes(range(64)), 4, 2, 32)
    for index in (2, 3):
        for position in range(32):
            expected = gf_mul_slow(erasure.gf_inv(index ^ 0), shards[0][position]) ^ gf_mul_slow(
                erasure.gf_inv(index ^ 1), shards[1][position]
            )
            assert shards[index][position] == expected


def test_stripes_cover_large_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(erasure, "STRIPE", 1000)  # many stripes, a short last one
    content = hashlib.shake_256(b"stripes").digest(10_000)
    shards = encode(content, 5, 3, 32)
    for index in range(5):
        stripes = list(erasure.shard_stripes(content, 5, 3, 32, index))
        assert [len(stripe) for stripe in stripes[:-1]] == [1000] * (len(stripes) - 1)
        assert b"".join(stripes) == shards[index]
    for subset in ((2, 3, 4), (0, 3, 4), (1, 2, 4)):
        assert decode({i: shards[i] for i in subset}, 5, 3, len(content)) == content
        assert rebuild({i: shards[i] for i in subset}, 5, 3, 0) == shards[0]


def test_wrong_inputs_raise_with_a_reason() -> None:
    content = hashlib.shake_256(b"errors").digest(3_000)
    shards = encode(content, 4, 2, 256)
    with pytest.raises(ErasureError, match="1 shards given; any 2 of the 4 are needed"):
        decode({3: shards[3]}, 4, 2, len(content))
    with pytest.raises(ErasureError, match="differ in size"):
        decode({0: shards[0], 3: shards[3][:-1]}, 4, 2, len(content))
    with pytest.raises(ErasureError, match="do not hold"):
        decode({0: shards[0][:256], 3: shards[3][:256]}, 4, 2, len(content))
    with pytest.raises(ErasureError, match="do not hold"):
        decode({0: shards[0] * 4, 3: shards[3] * 4}, 4, 2, len(content))
    with pytest.raises(ErasureError, match="shard index 4"):
        decode({0: shards[0], 4: shards[3]}, 4, 2, len(content))
    with pytest.raises(ErasureError, match="shard index 9"):
        rebuild({0: shards[0], 1: shards[1]}, 4, 2, 9)
    with pytest.raises(ErasureError, match="shard index 4"):
        erasure.encode_shard(content, 4, 2, 256, 4)
    with pytest.raises(ErasureError, match="empty"):
        decode({0: b"", 1: b""}, 4, 2, 0)
    with pytest.raises(ErasureError, match="need 1 <= k < n"):
        encode(content, 2, 2, 256)
    with pytest.raises(ErasureError, match="need 1 <= k < n"):
        encode(content, 300, 2, 256)
    with pytest.raises(ErasureError, match="leaf size"):
        encode(content, 4, 2, 100)
    # a damaged parity shard decodes to a file whose padding is not zero: caught
    damaged = bytearray(shards[3])
    damaged[-1] ^= 0x5A
    with pytest.raises(ErasureError, match="inconsistent"):
        decode({2: shards[2], 3: bytes(damaged)}, 4, 2, len(content))
