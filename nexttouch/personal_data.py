"""The one detector of personal data in ids and labels: e-mail addresses and phone numbers.

The API (nexttouch/api.py) refuses a request that carries any; ingest (nexttouch/ingest.py) refuses such
rows and columns. Phone numbers are recognised as people write them, nationally and internationally:

- with a ``+`` or an international ``00`` prefix: ``+447946095800``, ``+44 20 7946 0958``, ``00447946095822``;
- with a national trunk ``0``: ``07946095811``, ``(030) 1234-5678``, ``020 7946 0958``;
- as three or more groups of 2-4 digits: ``212-555-0123``, ``(212) 555 0123``.

Each needs 9 to 15 digits (E.164 has at most 15). What is *not* a phone number: digits inside an id
(``C0000001``, ``crm-00001a2b``, hex decision ids: a letter or ``-`` touches them), dates and times,
decimal numbers, zero-padded numeric ids (``0000123456``: no number starts ``000``) and bare digit runs
without a leading ``0`` (``123456789012`` is an id as often as a phone number; such ids stay allowed).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A run of digits, spaces, dots, dashes, slashes and brackets that no id character touches on either side.
_CANDIDATE = re.compile(r"(?<![\w.:@/+-])\+?\(?\d[\d ()./-]*\d\)?(?![\w:@/+-]|\.\w)")
_SEPARATORS = re.compile(r"[ ()./-]+")
# Prefilter for whole columns (RE2, no look-around): a value can only hold personal data if it matches.
_MAYBE = r"@|\+\s*\(?\d|(^|[^A-Za-z0-9_.:@/+-])\(?0\d|\d{2,4}[ ().-]+\d{2,4}[ ().-]+\d{2,4}"
MIN_DIGITS, MAX_DIGITS = 9, 15


def _is_phone(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        return False
    if candidate.startswith("+"):
        return True
    groups = [g for g in _SEPARATORS.split(candidate) if g]
    if digits.startswith("0"):  # trunk 0 or international 00, then a non-zero digit; not a decimal number
        leading = digits[1:] if not digits.startswith("00") else digits[2:]
        decimal = len(groups) == 2 and "." in candidate and " " not in candidate
        return leading[:1] not in ("", "0") and not decimal
    return len(groups) >= 3 and all(2 <= len(g) <= 4 for g in groups)


def phone_numbers(text: str) -> list[str]:
    """Every phone number in ``text`` (e.g. a whole file's bytes read as latin-1), as written."""
    return [m.group() for m in _CANDIDATE.finditer(text) if _is_phone(m.group())]


def find(text: str) -> str | None:
    """What personal data ``text`` holds ("an e-mail address", "a phone number"), or None."""
    if "@" in text and EMAIL.search(text):
        return "an e-mail address"
    if any(_is_phone(m.group()) for m in _CANDIDATE.finditer(text)):
        return "a phone number"
    return None


def mask(column: pd.Series) -> np.ndarray:
    """Which values of a text column hold personal data; vectorised (arrow prefilter, then ``find`` on the few
    values that could), so that 50M ids are checked in seconds."""
    values = pa.array(column, type=pa.large_string(), from_pandas=True)
    maybe = pc.fill_null(pc.match_substring_regex(values, _MAYBE), False).to_numpy(zero_copy_only=False)
    hits = np.zeros(len(values), bool)
    for i in np.flatnonzero(maybe):
        hits[i] = find(values[int(i)].as_py()) is not None
    return hits
