"""The SELMA3D challenge algorithm: what runs inside the container ``selma3d export-algorithm`` builds.

One case per call: find the single input image, segment it with the exported model through
:func:`selma3d.inference.patches.segment_case` (the code path of the ``infer`` rule, so the
container predicts what the leaderboard scored), write the mask as an int8 MetaImage with the
input's size, spacing, origin and direction (SimpleITK, compressed, atomically: a failed case
leaves no output). Editions (organisers' example repositories, see README "Submitting to the
challenge"):

- **2026**, Grand Challenge *invoke* API: :func:`serve` loads the model once from
  ``/opt/ml/model`` (the separately uploaded ``model.tar.gz``), then answers ``GET /health`` with
  200 and each ``POST /invoke`` with one case (201 on success). ``/input/inputs.json`` lists the
  socket values; the handler is chosen by the sorted tuple of socket slugs
  (``("light-sheet-3d-microscopy",)``, keyed ``socket``).
  ``/input/images/light-sheet-3d-microscopy/*.{tif,tiff,mha}`` ->
  ``/output/images/isolated-biological-structure/output.mha``.
- **2025**, exec: ``python inference.py`` runs one case and exits; the same folders;
  ``inputs.json`` keys the socket as ``interface``.
- **2024**, exec: ``/input/images/3d-brain-microscopy/`` ->
  ``/output/images/brain-structure/output.mha`` (no ``inputs.json`` is read).

Paths come from the environment so the same code runs under test without root:
``SELMA3D_INPUT_ROOT`` (``/input``), ``SELMA3D_OUTPUT_ROOT`` (``/output``), ``SELMA3D_MODEL_DIR``
(2026 ``/opt/ml/model``, else ``/opt/app/model`` inside the image), ``SELMA3D_HOST``
(``0.0.0.0``) and ``SELMA3D_PORT`` (4743). The model folder holds ``model.pt`` (the finetune
rule's payload: weights, network config, normalisation, optional per-structure
``postprocess``) and ``settings.json`` (``{"inference": <the infer config block>}``).

Bad input (no image, two images, a 2D or NaN image, a missing ``inputs.json``, an unknown socket
slug) gives one line on stderr, exit status 1 (exec) or HTTP 400 with ``{"error": ...}``
(invoke), and no output file. Only the standard library serves HTTP.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from selma3d import io
from selma3d.core.errors import InputError
from selma3d.core.structures import structure_from_name

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
SETTINGS_FILE = "settings.json"
INPUTS_JSON = "inputs.json"
DEFAULT_PORT = 4743  # the port Grand Challenge's invoke API talks to
PROG = "selma3d-algorithm"


@dataclass(frozen=True)
class Edition:
    """One challenge year's container contract.

    Attributes:
        year: 2024, 2025 or 2026.
        api: ``invoke`` (HTTP server) or ``exec`` (run once).
        slug: the input socket's slug.
        input_dir: the input image folder, relative to the input root.
        output_file: the mask, relative to the output root.
        inputs_key: the key naming the socket in ``inputs.json`` entries; None: not read.
        model_dir: where the model folder is inside the container.
        entry_point: the build folder's script that starts the algorithm.
    """

    year: int
    api: str
    slug: str
    input_dir: str
    output_file: str
    inputs_key: str | None
    model_dir: str
    entry_point: str
    suffixes: tuple[str, ...] = (".tif", ".tiff", ".mha")

    @property
    def interface(self) -> tuple[str, ...]:
        """The sorted socket slugs this algorithm handles."""
        return (self.slug,)


EDITIONS = {
    2024: Edition(2024, "exec", "3d-brain-microscopy", "images/3d-brain-microscopy",
                  "images/brain-structure/output.mha", None, "/opt/app/model", "inference.py"),
    2025: Edition(2025, "exec", "light-sheet-3d-microscopy", "images/light-sheet-3d-microscopy",
                  "images/isolated-biological-structure/output.mha", "interface", "/opt/app/model", "inference.py"),
    2026: Edition(2026, "invoke", "light-sheet-3d-microscopy", "images/light-sheet-3d-microscopy",
                  "images/isolated-biological-structure/output.mha", "socket", "/opt/ml/model", "app.py"),
}


def edition(year: int | str) -> Edition:
    try:
        return EDITIONS[int(year)]
    except (KeyError, ValueError):
        raise InputError(None, f"a SELMA3D edition in {sorted(EDITIONS)}", repr(year)) from None


@dataclass(frozen=True)
class Roots:
    """The container's folders (from the environment, defaults as on the platform)."""

    input: Path
    output: Path
    model: Path

    @classmethod
    def from_env(cls, ed: Edition, env: dict | None = None) -> "Roots":
        env = os.environ if env is None else env
        return cls(Path(env.get("SELMA3D_INPUT_ROOT") or "/input"), Path(env.get("SELMA3D_OUTPUT_ROOT") or "/output"),
                   Path(env.get("SELMA3D_MODEL_DIR") or ed.model_dir))


@dataclass
class Algorithm:
    """A loaded model with its inference settings (``init_model`` of the organisers' examples)."""

    net: Any
    payload: dict
    settings: dict
    edition: Edition
    model_dir: Path


def load_algorithm(model_dir: str | Path, ed: Edition, device=None) -> Algorithm:
    """Load ``model.pt`` and ``settings.json`` from the model folder, once."""
    from selma3d.training.finetune import load_model
    from selma3d.training.runtime import pick_device

    model_dir = Path(model_dir)
    for name in (MODEL_FILE, SETTINGS_FILE):
        if not (model_dir / name).is_file():
            raise InputError(model_dir / name, "the exported model file (selma3d export-algorithm)", "no such file")
    try:
        settings = json.loads((model_dir / SETTINGS_FILE).read_text())["inference"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(model_dir / SETTINGS_FILE, 'JSON with an "inference" object', repr(exc)) from exc
    net, payload = load_model(model_dir / MODEL_FILE, device or pick_device())
    log.info("model %s loaded on %s (%s, normalisation %s)", model_dir / MODEL_FILE,
             next(net.parameters()).device, payload["config"].get("backbone"), payload.get("normalize"))
    return Algorithm(net, payload, dict(settings), ed, model_dir)


# ----------------------------------------------------------------------------- one case


def read_inputs_json(input_root: Path, ed: Edition) -> list[dict]:
    """The platform's socket values (``inputs.json``); InputError when absent or malformed."""
    path = input_root / INPUTS_JSON
    if not path.is_file():
        raise InputError(path, "the platform's inputs.json (a list of socket values)", "no such file")
    try:
        values = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(path, "valid JSON", str(exc)) from exc
    if not isinstance(values, list) or not all(
            isinstance(v, dict) and isinstance(v.get(ed.inputs_key), dict) and "slug" in v[ed.inputs_key]
            for v in values):
        raise InputError(path, f'a list of entries with "{ed.inputs_key}": {{"slug": ...}} ({ed.year} format)',
                         json.dumps(values)[:120])
    return values


def interface_key(values: list[dict], ed: Edition) -> tuple[str, ...]:
    """The sorted tuple of socket slugs: what picks the handler."""
    return tuple(sorted(str(v[ed.inputs_key]["slug"]) for v in values))


def find_image(folder: Path, ed: Edition) -> Path:
    """The one input image of a case."""
    wanted = "one " + "/".join(ed.suffixes) + " image"
    if not folder.is_dir():
        raise InputError(folder, f"a folder holding {wanted}", "no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(ed.suffixes))
    if not files:
        others = sorted(p.name for p in folder.iterdir())
        raise InputError(folder, wanted, "none" + (f" (other entries: {', '.join(others[:5])})" if others else ""))
    if len(files) > 1:
        raise InputError(folder, wanted + " per case", f"{len(files)}: {', '.join(p.name for p in files[:5])}")
    return files[0]


def read_case(path: Path) -> tuple[np.ndarray, io.ImageGeometry]:
    """The (z, y, x) voxels as the pipeline reads them, and the header as SimpleITK reports it."""
    geometry = io.read_geometry(path)
    if geometry.dimension != 3 or geometry.components != 1:
        raise InputError(path, "a 3D single-channel image",
                         f"a {geometry.dimension}D image of size {geometry.size} with {geometry.components} "
                         "component(s)")
    data = io.read_volume(path).data
    if tuple(data.shape) != geometry.shape:
        raise InputError(path, f"voxels of shape {geometry.shape} (z, y, x) as SimpleITK reads the header",
                         f"shape {tuple(data.shape)}")
    return data, geometry


def _case_name(values: list[dict] | None, image: Path) -> str:
    """The case's original file name (the platform may rename the file; inputs.json keeps it)."""
    for v in values or []:
        name = (v.get("image") or {}).get("name") if isinstance(v.get("image"), dict) else None
        if name:
            return str(name)
    return image.name


def run_case(algorithm: Algorithm, input_root: str | Path, output_root: str | Path) -> dict:
    """Segment the one case under ``input_root`` into ``output_root`` (the ``/invoke`` body).

    Returns a summary (image, output, shape, foreground voxels, structure, seconds).
    """
    ed = algorithm.edition
    input_root, output_root = Path(input_root), Path(output_root)
    out = output_root / ed.output_file
    if out.exists():  # an earlier call's mask never passes for this case's
        out.unlink()
    values = None
    if ed.inputs_key:
        values = read_inputs_json(input_root, ed)
        key = interface_key(values, ed)
        handlers = {ed.interface: _segment}
        if key not in handlers:
            raise InputError(input_root / INPUTS_JSON, f"the sorted socket slugs {' or '.join(map(str, handlers))}",
                             str(key))
        return handlers[key](algorithm, input_root, out, values)
    return _segment(algorithm, input_root, out, values)


def _segment(algorithm: Algorithm, input_root: Path, out: Path, values: list[dict] | None) -> dict:
    from selma3d.inference.patches import segment_case

    ed = algorithm.edition
    t0 = time.perf_counter()
    image = find_image(input_root / ed.input_dir, ed)
    data, geometry = read_case(image)
    name = _case_name(values, image)
    structure = structure_from_name(io.case_name(name))
    mask = segment_case(algorithm.net, algorithm.payload, data, algorithm.settings, structure=structure,
                        source=image)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.write_mha(out, mask.astype(np.int8), geometry=geometry)
    summary = {"image": name, "output": str(out), "shape": list(mask.shape), "foreground": int(mask.sum()),
               "structure": structure, "seconds": round(time.perf_counter() - t0, 3)}
    log.info("%s (%s): %d foreground voxels of %d in %.2f s -> %s", name, structure or "structure unknown",
             summary["foreground"], mask.size, summary["seconds"], out)
    return summary


# ----------------------------------------------------------------------------- invoke API


def make_server(algorithm: Algorithm, roots: Roots, host: str = "0.0.0.0", port: int = DEFAULT_PORT
                ) -> ThreadingHTTPServer:
    """An HTTP server for the loaded algorithm: ``GET /health`` -> 200, ``POST /invoke`` -> one
    case (201; 400 on bad input; 500 on any other failure). Calls to /invoke run one at a time."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = PROG

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.split("?")[0] in ("/health", "/ping"):
                self._reply(200, {"status": "ok", "edition": algorithm.edition.year})
            else:
                self._reply(404, {"error": f"no such endpoint: GET {self.path}"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)  # the platform's request body carries nothing we need
            if self.path.split("?")[0] != "/invoke":
                self._reply(404, {"error": f"no such endpoint: POST {self.path}"})
                return
            with lock:
                try:
                    result = run_case(algorithm, roots.input, roots.output)
                except InputError as exc:
                    print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
                    self._reply(400, {"error": str(exc)})
                except Exception as exc:  # the server must answer and stay up
                    log.exception("invoke failed")
                    self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})
                else:
                    self._reply(201, result)

        def log_message(self, format, *args):
            log.debug("%s %s", self.address_string(), format % args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    return Server((host, int(port)), Handler)


def serve(algorithm: Algorithm, roots: Roots, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> None:
    """Answer /health and /invoke until SIGTERM or SIGINT."""
    import signal

    server = make_server(algorithm, roots, host, port)
    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    log.info("SELMA3D %d algorithm ready on http://%s:%d (/health, /invoke); input %s, output %s",
             algorithm.edition.year, host, server.server_address[1], roots.input, roots.output)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """The container's entry point (``app.py`` / ``inference.py`` of the build folder call it)."""
    from selma3d.core.logs import setup_logging
    from selma3d.training.runtime import configure_threads

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--edition", type=int, choices=sorted(EDITIONS), required=True)
    parser.add_argument("--once", action="store_true", help="process one case and exit, whatever the edition's API")
    args = parser.parse_args(argv)
    setup_logging()
    configure_threads()
    ed = EDITIONS[args.edition]
    roots = Roots.from_env(ed)
    try:
        algorithm = load_algorithm(roots.model, ed)
        if ed.api == "exec" or args.once:
            run_case(algorithm, roots.input, roots.output)
            return 0
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    serve(algorithm, roots, os.environ.get("SELMA3D_HOST") or "0.0.0.0",
          int(os.environ.get("SELMA3D_PORT") or DEFAULT_PORT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
