"""Dataset manifests: one table row per file, the single description every dataset shares.

Columns: ``case, role, split, structure, category, spacing_um, path, url, sha256, size``.
``path`` is where the file lives (relative paths resolve against the manifest's folder, or
the download destination for rows with a ``url``); ``role`` is ``unannotated`` (a whole
volume: a TIFF z-slice folder or an image file), ``image`` or ``label``; ``split`` is
``pretrain``, ``train``, ``val`` or ``test``; ``spacing_um`` is ``z,y,x`` in µm.
CSV or TSV (by suffix).

Optional columns (:data:`OPTIONAL_COLUMNS`; empty cells mean "not set"): on ``label`` rows,
``ignore_label``, ``background_values`` and ``annotated_z`` say how to read that label,
overriding the config's ``finetune.ignore_label``/``background_values`` (a dataset may mix
label conventions) and ignoring every z plane not listed (one partially annotated volume split
by plane); on ``unannotated`` rows, ``caption`` is a free-text description of the data that
image–text pretraining (``mae_text``) uses instead of the sentence built from the metadata.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from selma3d.core.errors import InputError
from selma3d.core.structures import CATEGORIES, STRUCTURE_CATEGORY
from selma3d.core.text import table_separator

COLUMNS = ["case", "role", "split", "structure", "category", "spacing_um", "path", "url", "sha256", "size"]
REQUIRED = ["case", "role", "split", "structure", "path"]
ROLES = {"unannotated", "image", "label"}
SPLITS = {"pretrain", "train", "val", "test"}
#: per-label-row reading of the ground truth (see :func:`label_rule`)
LABEL_COLUMNS = ["ignore_label", "background_values", "annotated_z"]
OPTIONAL_COLUMNS = LABEL_COLUMNS + ["caption"]


def parse_spacing(text: str | float | None, source: str = "") -> tuple[float, float, float]:
    """``"6,1.625,1.625"`` (z,y,x µm) -> tuple; empty -> (1, 1, 1)."""
    if text is None or (isinstance(text, float) and pd.isna(text)) or str(text).strip() == "":
        return (1.0, 1.0, 1.0)
    parts = str(text).replace("x", ",").replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise InputError(source or None, "spacing_um as three positive numbers 'z,y,x'", repr(text))
    return values


def parse_int_list(text: str | None, source: str = "", column: str = "") -> tuple[int, ...] | None:
    """``"17,48"`` or ``"0-49,77"`` (inclusive ranges) -> tuple of ints; empty -> None."""
    if text is None or str(text).strip() == "":
        return None
    values: list[int] = []
    try:
        for part in str(text).replace(" ", "").split(","):
            lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
            values.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise InputError(source or None, f"{column or 'the column'} as whole numbers 'a,b' or ranges 'a-b'",
                         repr(text)) from None
    return tuple(values)


def label_rule(row, ignore_label: int | None = None, background_values=(0,)
               ) -> tuple[int | None, tuple[int, ...], tuple[int, ...] | None]:
    """How to read one label: ``(ignore_label, background_values, annotated_z)``, the row's
    values where it sets them (manifest columns :data:`LABEL_COLUMNS`), else the defaults
    given (the config's ``finetune`` settings; ``annotated_z`` None: every plane)."""
    get = (lambda k: row.get(k, "")) if hasattr(row, "get") else (lambda k: getattr(row, k, ""))
    where = str(get("label") or get("path") or "")
    ign = parse_int_list(get("ignore_label"), where, "ignore_label")
    if ign is not None and len(ign) != 1:
        raise InputError(where or None, "ignore_label as one whole number", repr(get("ignore_label")))
    bg = parse_int_list(get("background_values"), where, "background_values")
    return (ign[0] if ign is not None else ignore_label,
            tuple(int(v) for v in (bg if bg is not None else background_values)),
            parse_int_list(get("annotated_z"), where, "annotated_z"))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest; relative ``path`` entries are resolved to absolute ones."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "a manifest CSV/TSV file", "nothing at that path")
    df = pd.read_csv(path, sep=table_separator(path), dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(path, f"columns {REQUIRED}", f"missing {missing} (has {list(df.columns)})")
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    for i, row in df.iterrows():
        where = f"{path} row {i + 2}"
        if row.role not in ROLES:
            raise InputError(where, f"role in {sorted(ROLES)}", repr(row.role))
        if row.split not in SPLITS:
            raise InputError(where, f"split in {sorted(SPLITS)}", repr(row.split))
        if not row.category:
            if row.structure not in STRUCTURE_CATEGORY:
                raise InputError(where, "a category column or a known structure", repr(row.structure))
            df.at[i, "category"] = STRUCTURE_CATEGORY[row.structure]
        elif row.category not in CATEGORIES:
            raise InputError(where, f"category in {list(CATEGORIES)}", repr(row.category))
        parse_spacing(row.spacing_um, where)
        if row["size"] and not str(row["size"]).isdigit():
            raise InputError(where, "size as a whole number of bytes", repr(row["size"]))
        if any(col in df.columns and str(row[col]).strip() for col in LABEL_COLUMNS):
            if row.role != "label":
                raise InputError(where, f"{LABEL_COLUMNS} on label rows only", f"a {row.role} row setting them")
            label_rule({**{col: row[col] for col in LABEL_COLUMNS if col in df.columns}, "path": where})
    base = path.parent.resolve()
    df["path"] = [str(p if Path(p).is_absolute() else (base / p)) for p in df["path"]]
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def write_manifest(df: pd.DataFrame, path: str | Path, relative_to: str | Path | None = None) -> Path:
    """Write a manifest (paths made relative to ``relative_to`` when given), atomically."""
    from selma3d.core.atomic import atomic_path

    out = df.copy()
    for col in COLUMNS:
        if col not in out.columns:
            out[col] = ""
    if relative_to is not None:
        base = Path(relative_to).resolve()
        out["path"] = [str(Path(p).resolve().relative_to(base)) if Path(p).resolve().is_relative_to(base) else p
                       for p in out["path"]]
    with atomic_path(path) as tmp:
        out[COLUMNS + [c for c in out.columns if c not in COLUMNS]].to_csv(tmp, index=False)
    return Path(path)


def annotated_pairs(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """One row per annotated case of a split: case, structure, category, spacing, image, label,
    and the label row's :data:`LABEL_COLUMNS` (empty where not set)."""
    sub = df[df.split == split]
    images = sub[sub.role == "image"].set_index("case")
    labels = sub[sub.role == "label"].set_index("case")
    rows = []
    for case, img in images.iterrows():
        if case not in labels.index:
            raise InputError(img.path, f"a label row for case {case!r} in split {split!r}", "none")
        lab = labels.loc[case]
        rows.append({"case": case, "structure": img.structure, "category": img.category,
                     "spacing_um": img.spacing_um, "image": img.path, "label": lab["path"],
                     **{col: str(lab.get(col, "")) for col in LABEL_COLUMNS}})
    return pd.DataFrame(rows, columns=["case", "structure", "category", "spacing_um", "image", "label"]
                        + LABEL_COLUMNS)


def volume_row(manifest: str | Path, volume: str) -> pd.Series:
    """The ``unannotated`` row of a volume (by case name), with a clear error if absent."""
    df = read_manifest(manifest)
    rows = df[(df.role == "unannotated") & (df.case == volume)]
    if rows.empty:
        known = sorted(df[df.role == "unannotated"].case.unique())
        raise InputError(manifest, f"an unannotated row for volume {volume!r} (known: {known})", "none")
    return rows.iloc[0]
