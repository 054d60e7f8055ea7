"""nexttouch.key_index: the row of each key, exactly, whatever the hashes do."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from nexttouch import key_index
from nexttouch.key_index import KeyIndex


def _text(values: list[str | None]) -> pa.Array:
    return pa.array(values, pa.large_string())


def _expected(indexed: list[tuple[str, str]], asked: list[tuple[str | None, str | None]]) -> list[int]:
    rows = {key: i for i, key in enumerate(indexed)}
    return [rows.get(key, -1) if None not in key else -1 for key in asked]


def test_each_key_finds_its_row_and_an_unknown_or_null_key_none() -> None:
    rng = np.random.default_rng(3)
    indexed = [(f"s{rng.integers(3)}", f"k{i}") for i in rng.permutation(5_000)]
    asked = [indexed[i] for i in rng.integers(0, len(indexed), 3_000)]
    asked += [("s9", "k1"), ("s0", "unknown"), (None, "k1"), ("s1", None), (indexed[0][1], indexed[0][0])]
    index = KeyIndex([_text([s for s, _ in indexed]), pa.chunked_array([_text([k for _, k in indexed])])])
    found = index.find([_text([s for s, _ in asked]), pa.array([k for _, k in asked], pa.string())])
    assert found.tolist() == _expected(indexed, asked)
    assert index.contains([_text(["s0"]), _text(["k1"])]).tolist() == [("s0", "k1") in indexed]


def _by_length(columns: list[pa.Array]) -> np.ndarray:
    """A bad hash: the length of the key's last part (keys of one length collide)."""
    return pc.fill_null(pc.utf8_length(columns[-1]), 0).to_numpy(zero_copy_only=False).astype(np.uint64)


def test_a_key_that_only_shares_a_hash_with_an_indexed_one_is_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_index, "key_hash", _by_length)
    index = KeyIndex([_text(["a", "bb", "ccc"])])
    assert index.find([_text(["bb", "zz", "ccc", "q", None])]).tolist() == [1, -1, 2, -1, -1]


def test_indexed_keys_that_share_a_hash_are_still_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_index, "key_hash", _by_length)
    indexed = [("x", "a"), ("x", "b"), ("y", "b"), ("x", "cc")]
    index = KeyIndex([_text([s for s, _ in indexed]), _text([k for _, k in indexed])])
    asked = [("y", "b"), ("x", "b"), ("x", "a"), ("y", "a"), ("x", "cc"), ("x", None)]
    found = index.find([_text([s for s, _ in asked]), _text([k for _, k in asked])])
    assert found.tolist() == _expected(indexed, asked) == [2, 1, 0, -1, 3, -1]
