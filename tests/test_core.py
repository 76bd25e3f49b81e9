"""selma3d.core helpers that several stages share (one copy each)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from selma3d.core.hashing import sha256_file
from selma3d.core.overlap import dice, dice_from_counts
from selma3d.core.text import format_spacing, table_separator, tex_escape


def test_format_spacing_round_trips_through_parse_spacing():
    from selma3d.data.manifest import parse_spacing

    assert format_spacing((6.0, 1.625, 1.625)) == "6,1.625,1.625"
    assert parse_spacing(format_spacing((4, 0.5, 0.5))) == (4.0, 0.5, 0.5)


def test_tex_escape_escapes_once_and_typesets_symbols():
    assert tex_escape(r"a_b 50% & #1 \x") == r"a\_b 50\% \& \#1 \textbackslash{}x"
    assert tex_escape("81.2 ± 3.4 (Δ 1–2)") == r"81.2 $\pm$ 3.4 ($\Delta$ 1--2)"


@pytest.mark.parametrize("name, sep", [("m.csv", ","), ("m.TSV", "\t"), ("m.tab", "\t"), ("m", ",")])
def test_table_separator(name, sep):
    assert table_separator(name) == sep


def test_sha256_file_and_resumed_hash(tmp_path):
    data = bytes(range(256)) * 9000  # over one read chunk
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    head = hashlib.sha256(b"prefix")
    assert sha256_file(path, head) == hashlib.sha256(b"prefix" + data).hexdigest()


def test_dice_protocols_and_ignore_mask():
    assert dice_from_counts(0, 0, 0) == 1.0 and dice_from_counts(0, 0, 0, 2026) == 1.0
    assert dice_from_counts(0, 3, 0) == 0.0 == dice_from_counts(0, 3, 0, 2026)
    a = np.zeros((2, 2, 2), bool)
    b = a.copy()
    a[0, 0, 0] = b[0, 0, 0] = a[1, 1, 1] = True
    assert dice(a, b) == pytest.approx(2 / 3)
    ignore = np.zeros_like(a)
    ignore[1, 1, 1] = True
    assert dice(a, b, ignore) == 1.0
