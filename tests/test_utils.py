"""The bottom layer's helpers: one implementation each, used by every layer above."""

import pytest

from mobile_vla.utils.device import resolve_device
from mobile_vla.utils.files import atomic_write_text, sha256_file
from mobile_vla.utils.memo import BoundedMemo


def test_the_memo_computes_each_distinct_key_once_and_drops_the_oldest():
    calls = []
    memo = BoundedMemo(2)

    def compute(key):
        calls.append(key)
        return key.upper()

    assert memo.get_many(["a", "b", "a"], compute) == ["A", "B", "A"]
    assert calls == ["a", "b"]
    assert memo.get_many(["c"], compute) == ["C"] and "a" not in memo and len(memo) == 2
    # more distinct keys in one call than the memo holds: every value still comes back
    assert memo.get_many(["x", "y", "z", "x"], compute) == ["X", "Y", "Z", "X"]
    assert calls == ["a", "b", "c", "x", "y", "z"]


def test_atomic_write_leaves_no_temporary_file_and_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "sub" / "f.json"
    atomic_write_text(path, '{"a": 1}')
    assert path.read_text() == '{"a": 1}' and [p.name for p in path.parent.iterdir()] == ["f.json"]
    assert sha256_file(path) == hashlib.sha256(b'{"a": 1}').hexdigest()


def test_resolve_device_names_the_bad_value():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="tpu"):
        resolve_device("tpu")
