"""selma3d.data.download against a real HTTP server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from selma3d import cli
from selma3d.data.download import ChecksumMismatch, DownloadError, download_manifest
from selma3d.data.manifest import read_manifest

FAST = dict(backoff=0.01, timeout=5, progress=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(n: int, seed: int) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


class FileServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` with Range support; ``faults[path]`` is a list of one-shot faults.

    Faults: ``("drop", k)`` send headers then k body bytes and close; ``("stall", s)`` sleep s
    before answering; ``("status", code)`` answer with that status. ``ignore_range`` paths
    always answer 200 with the whole file; ``hold`` keeps each request open for that long.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[tuple[str, float]]] = {}
        self.ignore_range: set[str] = set()
        self.hold = 0.0
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.stop = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def requests_for(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.log if r["path"] == path]


class Handler(http.server.BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.active += 1
            srv.max_active = max(srv.max_active, srv.active)
            fault = srv.faults.get(self.path, [None]).pop(0) if srv.faults.get(self.path) else None
            entry = {"path": self.path, "range": self.headers.get("Range"), "status": None}
            srv.log.append(entry)
        try:
            self._serve(srv, fault, entry)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with srv.lock:
                srv.active -= 1

    def _serve(self, srv: FileServer, fault, entry: dict) -> None:
        if srv.hold:
            srv.stop.wait(srv.hold)
        if fault and fault[0] == "stall":
            srv.stop.wait(fault[1])
        if fault and fault[0] == "status":
            entry["status"] = int(fault[1])
            self.send_error(int(fault[1]))
            return
        data = srv.files.get(self.path)
        if data is None:
            entry["status"] = 404
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and self.path not in srv.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
        if start >= len(data) and start:
            entry["status"] = 416
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        body = data[start:]
        entry["status"] = 206 if start else 200
        self.send_response(entry["status"])
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{_sha(data)[:16]}"')
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if fault and fault[0] == "drop":
            self.wfile.write(body[: int(fault[1])])
            self.wfile.flush()
            self.close_connection = True
            return  # connection closes with the body short of Content-Length
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


def _manifest(folder: Path, rows: list[dict], name: str = "m.csv") -> Path:
    """Write a manifest of nuclei training images; rows give path/url/sha256/size."""
    folder.mkdir(parents=True, exist_ok=True)
    full = []
    for k, r in enumerate(rows):
        full.append({"case": r.get("case", f"c{k:03d}"), "role": "image", "split": "train",
                     "structure": "cell_nuclei", "category": "", "spacing_um": "5,0.54,0.54",
                     "path": r.get("path", ""), "url": r.get("url", ""), "sha256": r.get("sha256", ""),
                     "size": r.get("size", "")})
    p = folder / name
    pd.DataFrame(full).to_csv(p, index=False)
    return p


def _leftovers(dest: Path) -> list[str]:
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if ".incomplete" in p.name)


# ------------------------------------------------------------------------------------ tests


def test_download_verifies_writes_local_manifest_and_is_idempotent(server, tmp_path):
    a, b = _payload(300_000, 1), _payload(5_000, 2)
    server.files = {"/d/a.nii.gz": a, "/d/b.nii.gz": b}
    m = _manifest(tmp_path / "cfg", [
        {"path": "raw/a.nii.gz", "url": server.base + "/d/a.nii.gz", "sha256": _sha(a).upper(),
         "size": len(a)},
        {"path": "", "url": server.base + "/d/b.nii.gz", "sha256": _sha(b)},
    ])
    dest = tmp_path / "data"
    df = download_manifest(m, dest, workers=2, **FAST)
    assert (dest / "raw" / "a.nii.gz").read_bytes() == a
    assert (dest / "b.nii.gz").read_bytes() == b  # url-derived name
    assert list(df.path) == [str((dest / "raw/a.nii.gz").resolve()), str((dest / "b.nii.gz").resolve())]
    assert list(df["size"]) == [str(len(a)), str(len(b))]
    local = read_manifest(dest / "manifest.csv")
    assert list(local.path) == list(df.path)
    assert pd.read_csv(dest / "manifest.csv", dtype=str).path.tolist() == ["raw/a.nii.gz", "b.nii.gz"]
    assert _leftovers(dest) == []
    n = len(server.log)
    download_manifest(m, dest, workers=2, **FAST)
    assert len(server.log) == n, "files already present with the right checksum must not be fetched"


def test_dropped_connection_resumes_with_range(server, tmp_path):
    data = _payload(400_000, 3)
    server.files = {"/f.bin": data}
    server.faults = {"/f.bin": [("drop", 150_000), ("drop", 100_000)]}
    m = _manifest(tmp_path, [{"path": "f.bin", "url": server.base + "/f.bin", "sha256": _sha(data)}])
    df = download_manifest(m, tmp_path / "out", retries=2, **FAST)
    assert Path(df.path[0]).read_bytes() == data
    log = server.requests_for("/f.bin")
    assert [r["range"] for r in log] == [None, "bytes=150000-", "bytes=250000-"]
    assert [r["status"] for r in log] == [200, 206, 206]


def test_resume_of_partial_left_by_earlier_run(server, tmp_path):
    data = _payload(200_000, 4)
    server.files = {"/p.bin": data}
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "p.bin.incomplete").write_bytes(data[:120_000])
    m = _manifest(tmp_path, [{"path": "p.bin", "url": server.base + "/p.bin", "sha256": _sha(data)}])
    download_manifest(m, dest, **FAST)
    assert (dest / "p.bin").read_bytes() == data
    assert [r["range"] for r in server.requests_for("/p.bin")] == ["bytes=120000-"]


def test_corrupt_partial_is_redownloaded_from_scratch(server, tmp_path):
    data = _payload(100_000, 5)
    server.files = {"/q.bin": data}
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "q.bin.incomplete").write_bytes(b"\0" * 50_000)  # wrong bytes kept from before
    m = _manifest(tmp_path, [{"path": "q.bin", "url": server.base + "/q.bin", "sha256": _sha(data)}])
    download_manifest(m, dest, **FAST)
    assert (dest / "q.bin").read_bytes() == data
    assert [r["range"] for r in server.requests_for("/q.bin")] == ["bytes=50000-", None]


def test_server_ignoring_range_restarts(server, tmp_path):
    data = _payload(250_000, 6)
    server.files = {"/r.bin": data}
    server.ignore_range = {"/r.bin"}
    server.faults = {"/r.bin": [("drop", 100_000)]}
    m = _manifest(tmp_path, [{"path": "r.bin", "url": server.base + "/r.bin", "sha256": _sha(data)}])
    df = download_manifest(m, tmp_path / "out", **FAST)
    assert Path(df.path[0]).read_bytes() == data
    log = server.requests_for("/r.bin")
    assert [r["range"] for r in log] == [None, "bytes=100000-"]
    assert [r["status"] for r in log] == [200, 200]  # range ignored: whole file again


def test_wrong_bytes_fail_naming_both_checksums_and_leave_nothing(server, tmp_path):
    data = _payload(80_000, 7)
    wrong = _sha(b"what the manifest promised")
    server.files = {"/w.bin": data}
    m = _manifest(tmp_path, [{"path": "sub/w.bin", "url": server.base + "/w.bin", "sha256": wrong}])
    dest = tmp_path / "out"
    with pytest.raises(ChecksumMismatch) as err:
        download_manifest(m, dest, **FAST)
    msg = str(err.value)
    assert wrong in msg and _sha(data) in msg and "w.bin" in msg
    assert not (dest / "sub" / "w.bin").exists()
    assert _leftovers(dest) == []
    assert not (dest / "manifest.csv").exists()


def test_404_is_a_clear_error_without_retries(server, tmp_path):
    m = _manifest(tmp_path, [{"path": "x.bin", "url": server.base + "/missing.bin", "sha256": "0" * 64}])
    with pytest.raises(DownloadError) as err:
        download_manifest(m, tmp_path / "out", retries=3, **FAST)
    assert err.value.status == 404
    assert "404" in str(err.value) and server.base + "/missing.bin" in str(err.value)
    assert len(server.requests_for("/missing.bin")) == 1


def test_several_failures_are_reported_together(server, tmp_path):
    m = _manifest(tmp_path, [{"path": "1.bin", "url": server.base + "/gone1"},
                             {"path": "2.bin", "url": server.base + "/gone2"}])
    with pytest.raises(DownloadError) as err:
        download_manifest(m, tmp_path / "out", workers=2, **FAST)
    assert len(err.value.errors) == 2
    assert "/gone1" in str(err.value) and "/gone2" in str(err.value)


def test_part_kept_after_giving_up_is_resumed_by_next_run(server, tmp_path):
    data = _payload(90_000, 13)
    server.files = {"/k.bin": data}
    server.faults = {"/k.bin": [("drop", 30_000), ("drop", 0)]}
    m = _manifest(tmp_path, [{"path": "k.bin", "url": server.base + "/k.bin", "sha256": _sha(data)}])
    dest = tmp_path / "out"
    with pytest.raises(DownloadError, match="giving up"):
        download_manifest(m, dest, retries=0, **FAST)
    assert (dest / "k.bin.incomplete").stat().st_size == 30_000  # progress reset the retry count once
    download_manifest(m, dest, **FAST)
    assert (dest / "k.bin").read_bytes() == data and _leftovers(dest) == []
    assert [r["range"] for r in server.requests_for("/k.bin")] == [None, "bytes=30000-", "bytes=30000-"]


def test_403_is_not_retried_and_cli_reports_it(server, tmp_path, capsys):
    server.files = {"/s.bin": b"x"}
    server.faults = {"/s.bin": [("status", 403)]}
    m = _manifest(tmp_path, [{"path": "s.bin", "url": server.base + "/s.bin", "sha256": _sha(b"x")}])
    rc = cli.main(["download", str(m), str(tmp_path / "out"), "--retries", "4", "--no-progress"])
    assert rc == 1
    assert "403" in capsys.readouterr().err
    assert len(server.requests_for("/s.bin")) == 1


def test_5xx_is_retried_then_succeeds(server, tmp_path):
    data = b"after two failures"
    server.files = {"/e.bin": data}
    server.faults = {"/e.bin": [("status", 503), ("status", 500)]}
    m = _manifest(tmp_path, [{"path": "e.bin", "url": server.base + "/e.bin", "sha256": _sha(data)}])
    download_manifest(m, tmp_path / "out", retries=2, **FAST)
    assert [r["status"] for r in server.requests_for("/e.bin")] == [503, 500, 200]


def test_slow_server_times_out_and_retries(server, tmp_path):
    data = _payload(10_000, 8)
    server.files = {"/slow.bin": data}
    server.faults = {"/slow.bin": [("stall", 3.0)]}
    m = _manifest(tmp_path, [{"path": "slow.bin", "url": server.base + "/slow.bin", "sha256": _sha(data)}])
    t0 = time.perf_counter()
    df = download_manifest(m, tmp_path / "out", retries=2, backoff=0.01, timeout=0.3, progress=False)
    assert time.perf_counter() - t0 < 2.5
    assert Path(df.path[0]).read_bytes() == data
    assert len(server.requests_for("/slow.bin")) == 2


def test_always_slow_server_fails_in_bounded_time(server, tmp_path):
    server.files = {"/never.bin": b"z"}
    server.faults = {"/never.bin": [("stall", 5.0)] * 3}
    m = _manifest(tmp_path, [{"path": "n.bin", "url": server.base + "/never.bin", "sha256": _sha(b"z")}])
    t0 = time.perf_counter()
    with pytest.raises(DownloadError, match="giving up after 2 attempt"):
        download_manifest(m, tmp_path / "out", retries=1, backoff=0.01, timeout=0.2, progress=False)
    assert time.perf_counter() - t0 < 2.0


def test_parallel_transfers_limited_to_workers(server, tmp_path):
    files = {f"/par/{k}.bin": _payload(20_000, 100 + k) for k in range(6)}
    server.files = files
    server.hold = 0.25
    m = _manifest(tmp_path, [{"path": f"{k}.bin", "url": server.base + p, "sha256": _sha(d)}
                             for k, (p, d) in enumerate(files.items())])
    download_manifest(m, tmp_path / "out", workers=2, **FAST)
    assert server.max_active == 2
    assert len(server.log) == 6


def test_wrong_announced_size_fails_early(server, tmp_path):
    data = _payload(1_000, 9)
    server.files = {"/z.bin": data}
    m = _manifest(tmp_path, [{"path": "z.bin", "url": server.base + "/z.bin", "size": 999, "sha256": ""}])
    with pytest.raises(ValueError, match="999 bytes.*announces 1000 bytes"):
        download_manifest(m, tmp_path / "out", **FAST)
    assert _leftovers(tmp_path / "out") == [] and not (tmp_path / "out" / "z.bin").exists()


def test_unknown_checksum_recorded_then_verified(server, tmp_path, caplog):
    data = _payload(50_000, 10)
    server.files = {"/u.bin": data}
    m = _manifest(tmp_path / "cfg", [{"path": "u.bin", "url": server.base + "/u.bin"}], name="user.csv")
    dest1 = tmp_path / "one"
    with caplog.at_level(logging.WARNING, logger="selma3d.data.download"):
        df = download_manifest(m, dest1, **FAST)
    assert df.sha256[0] == _sha(data)
    assert _sha(data) in caplog.text and "u.bin" in caplog.text
    for rec in (dest1 / "checksums.recorded.csv", tmp_path / "cfg" / "user.checksums.recorded.csv"):
        t = pd.read_csv(rec, dtype=str)
        assert t.url.tolist() == [server.base + "/u.bin"] and t.sha256.tolist() == [_sha(data)]
        assert t["size"].tolist() == [str(len(data))]

    caplog.clear()  # same destination: verified against the record, nothing fetched or re-recorded
    n = len(server.log)
    with caplog.at_level(logging.WARNING, logger="selma3d.data.download"):
        download_manifest(m, dest1, **FAST)
    assert len(server.log) == n and "recorded on first download" not in caplog.text

    server.files["/u.bin"] = data[:-1] + b"!"  # the server now serves other bytes
    dest2 = tmp_path / "two"
    with pytest.raises(ChecksumMismatch) as err:
        download_manifest(m, dest2, **FAST)
    assert _sha(data) in str(err.value) and "recorded" in str(err.value)
    assert not (dest2 / "u.bin").exists() and _leftovers(dest2) == []

    (dest1 / "u.bin").write_bytes(b"tampered locally")  # a changed local copy is not trusted either
    with pytest.raises(ChecksumMismatch):
        download_manifest(m, dest1, **FAST)
    assert not (dest1 / "u.bin").exists()


def test_file_url_and_local_path_rows_are_hard_linked(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a, b = _payload(3_000, 11), _payload(4_000, 12)
    (src / "a.nii.gz").write_bytes(a)
    (src / "b.nii.gz").write_bytes(b)
    cfg = tmp_path / "cfg"
    m = _manifest(cfg, [
        {"path": "img/a.nii.gz", "url": (src / "a.nii.gz").as_uri(), "sha256": _sha(a)},
        {"path": "", "url": "../src/b.nii.gz"},  # relative to the manifest's folder; checksum unknown
    ])
    dest = tmp_path / "out"
    df = download_manifest(m, dest, **FAST)
    for got, original in zip(df.path, [src / "a.nii.gz", src / "b.nii.gz"]):
        assert os.path.samefile(got, original)  # same inode: linked, not copied
    assert pd.read_csv(dest / "checksums.recorded.csv", dtype=str).sha256.tolist() == [_sha(b)]


def test_local_row_with_wrong_checksum_leaves_nothing(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"local bytes")
    m = _manifest(tmp_path / "cfg", [{"path": "a.bin", "url": src.as_uri(), "sha256": "f" * 64}])
    dest = tmp_path / "out"
    with pytest.raises(ChecksumMismatch, match="f" * 64):
        download_manifest(m, dest, **FAST)
    assert list(dest.iterdir()) == []


def test_rows_without_url_are_verified_in_place(tmp_path):
    cfg = tmp_path / "cfg"
    (cfg / "slices").mkdir(parents=True)
    (cfg / "img.nii.gz").write_bytes(b"local image")
    good = [{"path": "img.nii.gz", "sha256": _sha(b"local image"), "size": 11}, {"path": "slices"}]
    df = download_manifest(_manifest(cfg, good), tmp_path / "out", **FAST)
    assert list(df.path) == [str((cfg / "img.nii.gz").resolve()), str((cfg / "slices").resolve())]
    assert read_manifest(tmp_path / "out" / "manifest.csv").path.tolist() == list(df.path)

    bad = _manifest(cfg, [{"path": "img.nii.gz", "sha256": "e" * 64}], name="bad.csv")
    with pytest.raises(ChecksumMismatch, match="e" * 64):
        download_manifest(bad, tmp_path / "out2", **FAST)
    assert (cfg / "img.nii.gz").read_bytes() == b"local image"  # the user's file is never removed
    with pytest.raises(ValueError, match="nothing at that path"):
        download_manifest(_manifest(cfg, [{"path": "absent.nii.gz"}], name="absent.csv"),
                          tmp_path / "o3", **FAST)


def test_real_cfos_manifest_verifies_against_shared_data(repo, real_data, tmp_path):
    df = download_manifest(repo / "config" / "manifests" / "real_cfos.csv", tmp_path / "out", **FAST)
    assert len(df) and df.sha256.str.fullmatch(r"[0-9a-f]{64}").all()
    assert all(Path(p).resolve().is_relative_to(real_data.resolve()) for p in df.path)


def test_bad_manifest_rows_are_input_errors(tmp_path):
    with pytest.raises(ValueError, match="64 hexadecimal"):
        download_manifest(_manifest(tmp_path / "a", [{"path": "x", "url": "http://127.0.0.1:9/x",
                                                      "sha256": "abc"}]), tmp_path / "o1", **FAST)
    with pytest.raises(ValueError, match="inside the destination"):
        download_manifest(_manifest(tmp_path / "b", [{"path": "../x", "url": "http://127.0.0.1:9/x"}]),
                          tmp_path / "o2", **FAST)
    with pytest.raises(ValueError, match="whole number of bytes"):
        download_manifest(_manifest(tmp_path / "d", [{"path": "x", "url": "http://127.0.0.1:9/x",
                                                      "size": "12 MB"}]), tmp_path / "o4", **FAST)
    with pytest.raises(ValueError, match="one source per destination"):
        download_manifest(_manifest(tmp_path / "c", [{"path": "x", "url": "http://127.0.0.1:9/x"},
                                                     {"path": "x", "url": "http://127.0.0.1:9/y"}]),
                          tmp_path / "o3", **FAST)


def test_shipped_nuclei_manifest_is_valid(repo):
    m = repo / "config" / "manifests" / "selma3d_2024_nuclei.csv"
    df = read_manifest(m)
    assert len(df) == 24 and set(df.role) == {"image", "label"}
    assert df.sha256.str.fullmatch(r"[0-9a-f]{64}").all() and df.sha256.is_unique
    assert df.url.str.startswith("https://www.ebi.ac.uk/biostudies/files/S-BIAD1196/").all()
    assert set(df.category) == {"isolated_dense"}
    raw = pd.read_csv(m, dtype=str, keep_default_na=False)
    assert raw.sha256[raw.url.str.endswith("raw/patchvolume_000_0000.nii.gz")].tolist() == [
        "25e1e351872db53a22f2ff9196892e4cefcc44c3d0be98186c13d3c77f8e0397"]
    assert raw.sha256[raw.url.str.endswith("gt/patchvolume_011.nii.gz")].tolist() == [
        "3568b78e697997995123d270f3ae217659811949d3c79f9298acb2ac93c34522"]
