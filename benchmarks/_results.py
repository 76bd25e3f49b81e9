"""Dated, machine-named benchmark results: ``benchmarks/results/<name>_<date>.{json,md}`` (no paths)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: str = "cpu", threads: int | None = None) -> str:
    """``node (arch, cpu model, N cores[, T torch threads], device)``."""
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    t = f", {threads} torch threads" if threads else ""
    return f"{platform.node() or 'unknown'} ({platform.machine()}, {cpu}, {os.cpu_count()} cores{t}, device {device})"


def load_average() -> str:
    """The 1/5/15-minute load averages (other work on the machine while the benchmark ran)."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def write_results(name: str, payload: dict, markdown: list[str]) -> tuple[Path, Path]:
    """Write ``<name>_<date>.json`` (``payload`` plus the date) and ``.md`` under benchmarks/results."""
    stamp = time.strftime("%Y-%m-%d")
    RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS / f"{name}_{stamp}.json", RESULTS / f"{name}_{stamp}.md"
    js.write_text(json.dumps({"date": stamp, **payload}, indent=1) + "\n")
    md.write_text("\n".join(markdown) + "\n")
    print(f"wrote {js.name} and {md.name} in benchmarks/results")
    return js, md
