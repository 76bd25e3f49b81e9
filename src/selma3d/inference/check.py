"""``selma3d check-algorithm``: run an exported algorithm locally, without Docker, and check it.

Usage::

    selma3d check-algorithm build/selma3d-algorithm --images some/test/folder \\
        [--predictions results/predictions/<run>] [--no-bad-inputs] [--report check.tsv]

The build folder's own entry point (``app.py`` or ``inference.py``) runs in a subprocess with
the library from the build's source archive (what the image installs; ``--installed-library``
uses this process's instead) and a temporary ``/input``-like root, the paths given through
``SELMA3D_INPUT_ROOT``, ``SELMA3D_OUTPUT_ROOT`` and ``SELMA3D_MODEL_DIR``. For 2026 the model
comes from ``model.tar.gz`` (as the platform provides it) and the server is driven over
127.0.0.1: ``GET /health`` until 200, then one ``POST /invoke`` per case (201 expected). For
2024/2025 the entry point runs once per case (exit status 0 expected).

Every output is checked: it exists; it is int8 with values in {0, 1}; its size, spacing, origin
and direction are the input's; it equals, voxel for voxel, the pipeline's prediction
(:func:`selma3d.inference.patches.segment_case` in this process on the same model and settings,
and, with ``--predictions``, the ``infer`` rule's ``<case>.nii.gz``). Then malformed cases (no
image, two images, a 2D image, a NaN image, and for 2025/2026 a missing ``inputs.json`` and an
unknown socket slug) must each fail with a one-line error and leave no output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from selma3d import io
from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.core.structures import structure_from_name
from selma3d.inference.algorithm import INPUTS_JSON, Edition, edition, load_algorithm, read_case

MANIFEST = "manifest.json"
SOURCE_ARCHIVE = "selma3d-src.tar.gz"
MODEL_TARBALL = "model.tar.gz"
ERROR_PREFIX = "selma3d-algorithm: error:"


@dataclass
class Check:
    """One checked case: a real image, or a malformed input that must be refused."""

    case: str
    kind: str  # "image" or "bad input"
    ok: bool = False
    detail: str = ""
    latency_s: float | None = None
    compute_s: float | None = None
    foreground: int | None = None
    shape: tuple | None = None
    problems: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _inputs_json(ed: Edition, name: str, slug: str | None = None) -> list[dict]:
    """The platform's inputs.json for one image (2026: ``socket``, 2025: ``interface``)."""
    socket_value = {"slug": slug or ed.slug, "relative_path": ed.input_dir}
    return [{ed.inputs_key: socket_value, "image": {"name": name}, "file": None, "value": None}]


def stage_case(root: Path, ed: Edition, images: list[Path], inputs: list[dict] | None | bool = True) -> None:
    """Fill an input root for one case: ``images`` in the socket folder, and ``inputs.json``
    (True: the right one for the first image; False: none; a list: that content)."""
    if root.exists():
        shutil.rmtree(root)
    folder = root / ed.input_dir
    folder.mkdir(parents=True)
    for img in images:
        shutil.copyfile(img, folder / img.name)
    if ed.inputs_key and inputs is not False:
        content = _inputs_json(ed, images[0].name if images else "missing.mha") if inputs is True else inputs
        (root / INPUTS_JSON).write_text(json.dumps(content, indent=2))


def _clear(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def bad_input_cases(ed: Edition, image: Path, tmp: Path) -> dict[str, dict]:
    """Malformed cases built from one good image: name -> {"images", "inputs"}."""
    data = io.read_volume(image).data
    two_d = tmp / "plane_2d.mha"
    io.write_mha(two_d, np.asarray(data[data.shape[0] // 2]))
    nan = tmp / "with_nan.mha"
    bad = np.asarray(data, dtype=np.float32).copy()
    bad.flat[bad.size // 2] = np.nan
    io.write_mha(nan, bad)
    second = tmp / ("second_" + image.name)
    shutil.copyfile(image, second)
    cases = {
        "no image": {"images": [], "inputs": True},
        "two images": {"images": [image, second], "inputs": True},
        "2D image": {"images": [two_d], "inputs": True},
        "NaN image": {"images": [nan], "inputs": True},
    }
    if ed.inputs_key:
        cases["missing inputs.json"] = {"images": [image], "inputs": False}
        cases["unknown socket slug"] = {"images": [image], "inputs": _inputs_json(ed, image.name, "some-other-socket")}
    return cases


class _Runner:
    """Runs the build's entry point: a server (invoke) or one process per case (exec)."""

    def __init__(self, build: Path, ed: Edition, env: dict, workdir: Path, timeout: float, python: str):
        self.build, self.ed, self.env, self.timeout, self.python = build, ed, env, timeout, python
        self.entry = build / ed.entry_point
        self.log = workdir / "algorithm.log"
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{env.get('SELMA3D_PORT')}"

    def __enter__(self) -> "_Runner":
        if self.ed.api == "invoke":
            self._log_fh = open(self.log, "w")
            self.proc = subprocess.Popen([self.python, str(self.entry)], cwd=self.build, env=self.env,
                                         stdout=self._log_fh, stderr=subprocess.STDOUT)
            self.startup_s = self._wait_healthy()
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._log_fh.close()

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""

    def _request(self, method: str, path: str, timeout: float) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, method=method, data=b"{}" if method == "POST" else None,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                code, body = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            code, body = err.code, err.read()
        try:
            return code, json.loads(body or b"{}")
        except ValueError:
            return code, {"raw": body.decode(errors="replace")}

    def health(self) -> int:
        try:
            return self._request("GET", "/health", 5)[0]
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0

    def _wait_healthy(self) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.timeout:
            if self.proc.poll() is not None:
                raise InputError(self.entry, "a server that starts and answers /health",
                                 f"exit status {self.proc.returncode}:\n{self.tail()}")
            if self.health() == 200:
                return time.perf_counter() - t0
            time.sleep(0.2)
        raise InputError(self.entry, f"/health answering 200 within {self.timeout:.0f} s", f"no answer:\n{self.tail()}")

    def invoke(self) -> tuple[bool, str, float, dict]:
        """One case: (succeeded, one-line error or "", seconds, response body)."""
        t0 = time.perf_counter()
        if self.ed.api == "invoke":
            try:
                code, body = self._request("POST", "/invoke", self.timeout)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                alive = "running" if self.proc.poll() is None else f"exited with status {self.proc.returncode}"
                return False, f"no answer from /invoke ({exc}); the server {alive}", time.perf_counter() - t0, {}
            seconds = time.perf_counter() - t0
            if code == 201:
                return True, "", seconds, body
            return False, str(body.get("error", body)), seconds, {"status": code, **body}
        res = subprocess.run([self.python, str(self.entry)], cwd=self.build, env=self.env, capture_output=True,
                             text=True, timeout=self.timeout)
        seconds = time.perf_counter() - t0
        self.log.write_text(res.stdout + res.stderr)
        if res.returncode == 0:
            return True, "", seconds, {}
        errors = [line for line in res.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
        message = errors[-1] if errors else (res.stderr.strip().splitlines() or ["(no message)"])[-1]
        return False, message, seconds, {"status": res.returncode, "error_lines": len(errors)}


def check_output(out: Path, image: Path, reference: np.ndarray, prediction: Path | None = None) -> list[str]:
    """What is wrong with one output mask (empty: nothing)."""
    if not out.is_file():
        return [f"no output at {out}"]
    problems = []
    want, got = io.read_geometry(image), io.read_geometry(out)
    differ = want.matches(got)
    if differ:
        problems.append("geometry differs from the input in " + ", ".join(
            f"{k} ({getattr(got, k)}, input {getattr(want, k)})" for k in differ))
    mask = io.read_volume(out).data
    if mask.dtype != np.int8:
        problems.append(f"dtype {mask.dtype}, expected int8")
    values = np.unique(mask)
    if not set(values.tolist()) <= {0, 1}:
        problems.append(f"values {values[:6].tolist()}, expected a subset of {{0, 1}}")
    if mask.shape != reference.shape:
        problems.append(f"shape {mask.shape}, expected {reference.shape}")
    else:
        diff = int(np.count_nonzero((mask > 0) != (reference > 0)))
        if diff:
            problems.append(f"{diff} voxels differ from the pipeline's prediction (segment_case)")
        if prediction is not None:
            if not prediction.is_file():
                problems.append(f"no pipeline prediction {prediction}")
            else:
                pred = io.read_volume(prediction).data
                diff = int(np.count_nonzero((mask > 0) != (pred > 0))) if pred.shape == mask.shape else -1
                if diff:
                    problems.append(f"differs from {prediction.name} of the infer rule "
                                    f"({'shape ' + str(pred.shape) if diff < 0 else str(diff) + ' voxels'})")
    return problems


def list_images(folder: str | Path, ed: Edition) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "a folder of test images", "no such folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(ed.suffixes))
    if not images:
        raise InputError(folder, "test images (" + "/".join(ed.suffixes) + ")", "none")
    return images


def check_algorithm(build: str | Path, images: str | Path, *, predictions: str | Path | None = None,
                    bad_inputs: bool = True, timeout: float = 600, shipped_library: bool = True,
                    python: str = sys.executable) -> list[Check]:
    """Run the exported algorithm in ``build`` on every image of ``images`` and check it.

    Args:
        build: the build folder (``selma3d export-algorithm``).
        images: a folder of ``.tif/.tiff/.mha`` test images.
        predictions: the ``infer`` rule's folder of the exported run (``<case>.nii.gz``): the
            outputs must equal those too.
        bad_inputs: also check that malformed cases are refused cleanly.
        timeout: seconds allowed for the server to come up and for each case.
        shipped_library: run the library from the build's source archive (as the image does).
        python: the interpreter running the entry point.
    Returns:
        one :class:`Check` per image, then per malformed case.
    """
    import torch

    from selma3d.inference.patches import segment_case

    build = Path(build).resolve()
    if not (build / MANIFEST).is_file():
        raise InputError(build / MANIFEST, "an exported algorithm (selma3d export-algorithm)", "no manifest.json")
    manifest = json.loads((build / MANIFEST).read_text())
    ed = edition(manifest["edition"])
    files = list_images(images, ed)
    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="selma3d-check-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "SELMA3D_INPUT_ROOT": str(tmp / "input"), "SELMA3D_OUTPUT_ROOT": str(tmp / "output"),
               "SELMA3D_HOST": "127.0.0.1", "SELMA3D_PORT": str(_free_port()),
               "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same threads, same float sums
        if shipped_library:
            with tarfile.open(build / SOURCE_ARCHIVE) as tar:
                tar.extractall(tmp / "library", filter="data")
            env["PYTHONPATH"] = os.pathsep.join([str(tmp / "library" / "selma3d" / "src")]
                                                + [p for p in [os.environ.get("PYTHONPATH")] if p])
        if ed.api == "invoke":  # as the platform provides it: the model tarball, extracted
            with tarfile.open(build / MODEL_TARBALL) as tar:
                tar.extractall(tmp / "model", filter="data")
            env["SELMA3D_MODEL_DIR"] = str(tmp / "model")
        else:
            env["SELMA3D_MODEL_DIR"] = str(build / "model")
        algorithm = load_algorithm(env["SELMA3D_MODEL_DIR"], ed)
        out_file = tmp / "output" / ed.output_file
        with _Runner(build, ed, env, tmp, timeout, python) as runner:
            for image in files:
                check = Check(io.case_name(image.name), "image")
                data, _ = read_case(image)
                check.shape = tuple(data.shape)
                reference = segment_case(algorithm.net, algorithm.payload, data, algorithm.settings,
                                         structure=structure_from_name(io.case_name(image.name)), source=image)
                stage_case(tmp / "input", ed, [image])
                _clear(tmp / "output")
                ok, error, check.latency_s, body = runner.invoke()
                check.compute_s = body.get("seconds")
                if not ok:
                    check.problems.append(f"the algorithm failed: {error}\n{runner.tail()}")
                else:
                    prediction = Path(predictions) / f"{check.case}.nii.gz" if predictions else None
                    check.problems += check_output(out_file, image, reference, prediction)
                    check.foreground = int(reference.sum())
                check.ok = not check.problems
                check.detail = "; ".join(check.problems) or "output matches the pipeline"
                checks.append(check)
            if bad_inputs:
                for name, case in bad_input_cases(ed, files[0], tmp).items():
                    check = Check(name, "bad input")
                    stage_case(tmp / "input", ed, case["images"], case["inputs"])
                    _clear(tmp / "output")
                    ok, error, check.latency_s, body = runner.invoke()
                    if ok:
                        check.problems.append("accepted a malformed case")
                    if not error or "\n" in error.strip():
                        check.problems.append(f"no one-line error: {error!r}")
                    if ed.api == "exec" and body.get("error_lines", 0) != 1:
                        check.problems.append(f"{body.get('error_lines', 0)} '{ERROR_PREFIX}' lines on stderr")
                    left = _files(tmp / "output")
                    if left:
                        check.problems.append(f"left output files {left}")
                    check.ok = not check.problems
                    check.detail = error if check.ok else "; ".join(check.problems)
                    checks.append(check)
            if ed.api == "invoke" and runner.health() != 200:
                checks.append(Check("health after all cases", "server", False, "/health no longer answers 200"))
    return checks


def format_checks(checks: list[Check]) -> str:
    """A plain-text table of the checks."""
    rows = [("case", "kind", "result", "latency s", "foreground", "detail")]
    for c in checks:
        rows.append((c.case, c.kind, "OK" if c.ok else "FAIL", "" if c.latency_s is None else f"{c.latency_s:.2f}",
                     "" if c.foreground is None else str(c.foreground), c.detail.splitlines()[0] if c.detail else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5] for r in rows)


def write_report(checks: list[Check], path: str | Path) -> Path:
    """The checks as a TSV, atomically."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame([{k: v for k, v in asdict(c).items() if k != "problems"} for c in checks]).to_csv(
            tmp, sep="\t", index=False)
    return Path(path)


# ----------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("build", help="build folder written by `selma3d export-algorithm`")
    parser.add_argument("--images", required=True, help="folder of .tif/.tiff/.mha test images")
    parser.add_argument("--predictions", help="the infer rule's predictions of the run (<case>.nii.gz): must match")
    parser.add_argument("--no-bad-inputs", action="store_true", help="skip the malformed-input cases")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for start-up and per case (default 600)")
    parser.add_argument("--installed-library", action="store_true",
                        help="run the entry point with this environment's selma3d, not the build's source archive")
    parser.add_argument("--report", help="also write the checks as a TSV")


def run(args: argparse.Namespace) -> int:
    from selma3d.core.logs import setup_logging
    from selma3d.training.runtime import configure_threads

    setup_logging()
    configure_threads()
    checks = check_algorithm(args.build, args.images, predictions=args.predictions,
                             bad_inputs=not args.no_bad_inputs, timeout=args.timeout,
                             shipped_library=not args.installed_library)
    print(format_checks(checks))
    if args.report:
        write_report(checks, args.report)
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed" + (f"; FAILED: {', '.join(c.case for c in failed)}"
                                                                          if failed else ""))
    return 1 if failed else 0


def stage_manifest_images(manifest: str | Path, folder: str | Path, count: int | None = None,
                          split: str = "test") -> list[Path]:
    """The first ``count`` (all: None) ``split`` images of a dataset manifest as ``<case>.mha``
    (voxels exactly as the pipeline reads them, its spacing): test input for the container."""
    from selma3d.data.manifest import read_manifest

    table = read_manifest(manifest)
    rows = table[(table.split == split) & (table.role == "image")].sort_values("case")
    if rows.empty:
        raise InputError(manifest, f"image rows with split {split!r}", "none")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for _, row in list(rows.iterrows())[:count]:
        vol = io.read_volume(row.path)
        out.append(io.write_mha(folder / f"{row.case}.mha", vol.data, vol.spacing))
    return out
