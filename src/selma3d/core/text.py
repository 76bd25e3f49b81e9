"""Text conventions shared by every stage: voxel-size strings, TeX escaping, CSV/TSV tables."""

from __future__ import annotations

from pathlib import Path

TSV_SUFFIXES = (".tsv", ".tab")

_TEX = (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
        ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("–", "--"))


def format_spacing(spacing) -> str:
    """(z, y, x) µm -> ``"6,1.625,1.625"``, the ``spacing_um`` form manifests and patch indexes store."""
    return ",".join(f"{float(s):g}" for s in spacing)


def tex_escape(text: str) -> str:
    """Plain text (labels, table cells) safe inside a LaTeX tabular; ``±``, ``Δ`` and ``–`` typeset."""
    for plain, tex in _TEX:  # the backslash first, so later replacements are not escaped again
        text = text.replace(plain, tex)
    return text


def table_separator(path: str | Path) -> str:
    """The field separator of a table file: tab for ``.tsv``/``.tab``, else comma."""
    return "\t" if str(path).lower().endswith(TSV_SUFFIXES) else ","
