"""nexttouch.blanks: the blanks trimmed from ids as they arrive, found from bytes."""

import pyarrow as pa
import pytest

from nexttouch.blanks import edge_blank, trimmed


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.string_view()])
def test_blanks_at_either_edge_are_found_in_any_text_type(kind: pa.DataType) -> None:
    assert not edge_blank(pa.array(["a", "b c", None, ""], kind))
    for padded in (" a", "a ", "\ta", "a\n", "\fa", "a\r"):
        assert edge_blank(pa.array(["x", None, padded], kind)), repr(padded)
    assert not edge_blank(pa.array(["\u3000a", "a\x0b", "é"], kind))  # not RE2's \s: not blanks


def test_a_slice_is_read_from_its_own_offsets() -> None:
    text = pa.array([" a", "b", "c", "d "], pa.large_string())
    assert not edge_blank(text.slice(1, 2)) and edge_blank(text.slice(2))


def test_trimmed_text_is_the_same_array_when_nothing_is_to_trim() -> None:
    clean = pa.array(["a", None, "b"], pa.string())
    assert trimmed(clean) is clean
    assert trimmed(pa.array([" a\t", None, "\r\nb"], pa.string_view())).to_pylist() == ["a", None, "b"]
