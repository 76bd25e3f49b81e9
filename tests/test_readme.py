"""The README's measured sections are what benchmarks/readme.py generates from the result files."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("readme_gen", REPO / "benchmarks" / "readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_generated_sections_are_up_to_date():
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "readme.py"), "--check"],
                         check=False, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_a_hand_edit_inside_a_section_is_overwritten():
    mod = _module()
    text = (REPO / "README.md").read_text()
    edited = text.replace("<!-- generated:recipe -->\n", "<!-- generated:recipe -->\n| typed | by hand |\n", 1)
    assert edited != text
    assert "| typed | by hand |" not in mod.render(edited)
    assert mod.render(edited) == mod.render(text)


def test_ssl_table_means_over_seeds_and_paired_deltas():
    rows = []
    for seed, (s, m) in enumerate([(0.5, 0.6), (0.7, 0.6)]):
        for strategy, d in (("scratch", s), ("mae", m)):
            for case, structure in (("a", "cfos_neuron"), ("b", "blood_vessel")):
                rows.append({"strategy": strategy, "budget": "all", "seed": seed, "case": case,
                             "structure": structure, "dice": d, "protocol": "selma3d2026"})
    lines = _module().ssl_table(pd.DataFrame(rows))
    scratch = next(ln for ln in lines if ln.startswith("| scratch |"))
    mae = next(ln for ln in lines if ln.startswith("| mae |"))
    assert "| 60.0 ± 14.1 |" in scratch          # seeds 50 and 70
    assert "| 60.0 ± 0.0 |" in mae
    assert mae.endswith("| +0.0 (1 of 2) |")     # +10 on seed 0, -10 on seed 1
