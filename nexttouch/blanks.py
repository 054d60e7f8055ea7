"""Blanks around ids as they arrive: which characters (RE2's ``\\s``), whether a column has any, trimmed.

Ingest trims ids of them, and its split hashes ids trimmed the same way, so that an id and the same
id with blanks around it meet in one partition, where they are found to be one id.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BLANKS = " \t\n\f\r"
_BLANK = np.isin(np.arange(256), [ord(c) for c in BLANKS])


def edge_blank(text: pa.Array) -> bool:
    """Whether any value starts or ends with a blank, from its first and last bytes: no regex, no copy.

    A UTF-8 byte below 0x80 is always a whole character, so the bytes say it exactly.
    """
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        text = text.cast(pa.large_string())
    _, offsets, data = text.buffers()
    if data is None or not len(text):
        return False
    width = np.int64 if pa.types.is_large_string(text.type) else np.int32
    offsets = np.frombuffer(offsets, width)[text.offset : text.offset + len(text) + 1]
    data = np.frombuffer(data, np.uint8)
    filled = offsets[1:] > offsets[:-1]
    if text.null_count:
        filled &= text.is_valid().to_numpy(zero_copy_only=False)
    return bool(_BLANK[data[offsets[:-1][filled]]].any() or _BLANK[data[offsets[1:][filled] - 1]].any())


def trimmed(text: pa.Array) -> pa.Array:
    """``text`` without blanks around its values: itself when none has any (the usual case, no copy)."""
    if not edge_blank(text):
        return text
    return pc.utf8_trim(text if not pa.types.is_string_view(text.type) else text.cast(pa.large_string()), BLANKS)
