"""Fetch a manifest's files so that the rest of the pipeline can trust them.

Every row with a ``url`` is fetched into ``dest/<path>`` (``path`` relative to the download
destination, or the URL's file name when ``path`` is empty):

- ``http(s)://``: streamed to ``<name>.incomplete``, resumed with ``Range`` requests after a
  dropped connection (restarted when the server ignores ``Range``), retried with exponential
  backoff on connection errors, timeouts, 5xx, 408 and 429; 4xx errors such as 403/404 fail at
  once. SHA-256 is computed while streaming (the kept part is re-hashed on resume), the size is
  checked when known, and the file is renamed into place only when both match.
- ``file://`` URLs and plain local paths (relative ones resolve against the manifest's folder):
  hard-linked into ``dest`` (copied when linking is impossible), after the same checks.

Rows without a ``url`` name files that are already local: they are checked where they are
(they must exist; size and SHA-256 when given) and never moved, linked or deleted.

A row with a ``url`` but no ``sha256`` is trusted on first use only: the checksum computed on
the first download is recorded in ``dest/checksums.recorded.csv`` and in
``<manifest-stem>.checksums.recorded.csv`` beside the manifest, reported as a warning, and every
later run (into the same or a fresh destination) verifies against it. Nothing here runs at
import time, so a Snakemake dry-run never touches the network.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import re
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from selma3d.core.schema import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.core.hashing import CHUNK, sha256_file
from selma3d.core.text import table_separator
from selma3d.data.manifest import read_manifest, write_manifest

log = logging.getLogger(__name__)

RECORD_NAME = "checksums.recorded.csv"
RECORD_COLUMNS = ["url", "path", "sha256", "size", "recorded_utc"]
PARTIAL_SUFFIX = ".incomplete"
MAX_DELAY_S = 300.0
#: HTTP statuses worth asking again for; every other error status fails at once.
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(RuntimeError):
    """A transfer that could not complete; the message names the URL and the cause."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None,
                 errors: list[BaseException] | None = None):
        super().__init__(message)
        self.url = url
        self.status = status
        self.errors = errors or []


class ChecksumMismatch(InputError):
    """Downloaded/linked bytes whose SHA-256 differs from the expected one (no file is left)."""

    def __init__(self, path: str | Path, expected: str, computed: str, source: str, origin: str):
        self.expected_sha256 = expected
        self.computed_sha256 = computed
        super().__init__(path, f"sha256 {expected} ({origin}) for {source}", f"sha256 {computed}")
        self._args = (path, expected, computed, source, origin)

    def __reduce__(self):
        return (type(self), self._args)


class _Retry(Exception):
    """A transient failure: try again after a delay (``progressed``: bytes were gained)."""

    def __init__(self, reason: str, progressed: bool = False, delay: float | None = None):
        super().__init__(reason)
        self.progressed = progressed
        self.delay = delay


@dataclass
class _Job:
    """One destination file (rows sharing url and path are fetched once)."""

    url: str
    target: Path
    rel: str
    sha256: str | None  # expected, from the manifest or a record
    origin: str  # where the expected checksum came from
    size: int | None
    rows: list[int] = field(default_factory=list)
    local: Path | None = None  # source path for file:// or plain-path rows
    in_place: bool = False  # a row without url: verified where it is


@dataclass
class _Result:
    job: _Job
    action: str  # downloaded | resumed | skipped | linked | copied | verified | present
    sha256: str
    size: int
    newly_recorded: bool


class _Cancelled(Exception):
    """The run was interrupted; partial files stay for the next run to resume."""


class _Progress:
    """One thread-safe byte counter (tqdm) for the whole run; totals grow as sizes are learnt."""

    def __init__(self, enabled: bool):
        from tqdm import tqdm

        self._lock = threading.Lock()
        tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        # into a log file (a Snakemake rule): a line every 30 s, not ten per second
        self._bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="download",
                         disable=not enabled, leave=True, mininterval=0.1 if tty else 30.0)

    def add_total(self, n: int) -> None:
        with self._lock:
            self._bar.total = (self._bar.total or 0) + n
            self._bar.refresh()

    def update(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


@dataclass
class _Ctx:
    """Settings and shared state of one run, handed to every worker."""

    retries: int
    backoff: float
    timeout: float
    bar: _Progress
    cancel: threading.Event


# --------------------------------------------------------------------------- public API


def download_manifest(manifest: str | Path, dest: str | Path, workers: int = schema_default("dataset.download_workers"),
                      retries: int = 5,
                      backoff: float = 1.0, timeout: float = 60, progress: bool = True) -> pd.DataFrame:
    """Fetch every ``url`` row of ``manifest`` into ``dest``; return the manifest with local paths.

    Writes ``dest/manifest.csv`` (paths relative to ``dest``) atomically once every file is in
    place and verified. Raises :class:`ChecksumMismatch` (an ``InputError``) for wrong bytes,
    :class:`DownloadError` for HTTP/network failures (several failures: one ``DownloadError``
    listing them all in ``.errors``), ``InputError`` for a bad manifest.
    """
    manifest = Path(manifest)
    dest = Path(dest).resolve()
    if workers < 1:
        raise InputError(None, "workers >= 1", repr(workers))
    if retries < 0:
        raise InputError(None, "retries >= 0", repr(retries))
    df = read_manifest(manifest)
    raw_paths = _raw_paths(manifest)
    dest.mkdir(parents=True, exist_ok=True)

    side_record = manifest.resolve().parent / f"{manifest.stem}.{RECORD_NAME}"
    dest_record = dest / RECORD_NAME
    records = _Records(dest_record, side_record)
    jobs = _plan(df, raw_paths, manifest, dest, records)

    ctx = _Ctx(retries, backoff, timeout, _Progress(progress), threading.Event())
    results: list[_Result] = []
    errors: list[BaseException] = []
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="selma3d-dl") as pool:
            futures = {pool.submit(_fetch, job, ctx): job for job in jobs}
            try:
                for fut in as_completed(futures):
                    job = futures[fut]
                    try:
                        res = fut.result()
                    except Exception as exc:  # collected: one bad file must not hide the others
                        errors.append(exc)
                        continue
                    results.append(res)
                    if res.newly_recorded:
                        records.add(job.url, job.rel, res.sha256, res.size)
            except BaseException:  # Ctrl-C: stop the workers at their next chunk, keep the parts
                ctx.cancel.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        ctx.bar.close()

    recorded = [r for r in results if r.newly_recorded]
    if recorded:
        listing = "\n".join(f"  {r.job.rel}  sha256={r.sha256}  size={r.size}  ({r.job.url})"
                            for r in recorded)
        log.warning("%d file(s) had no sha256 in %s; recorded on first download in %s and %s "
                    "(later runs verify against these; copy them into the manifest to pin them):\n%s",
                    len(recorded), manifest, dest_record, side_record, listing)
    if errors:
        if len(errors) == 1:
            raise errors[0]
        raise DownloadError(f"{len(errors)} of {len(jobs)} file(s) failed:\n"
                            + "\n".join(f"  - {e}" for e in errors), errors=errors)

    out = df.copy()
    for res in results:
        if res.job.in_place:
            continue
        for i in res.job.rows:
            out.at[i, "path"] = str(res.job.target)
            out.at[i, "sha256"] = res.sha256
            out.at[i, "size"] = str(res.size)
    write_manifest(out, dest / "manifest.csv", relative_to=dest)
    counts = pd.Series([r.action for r in results], dtype=str).value_counts().to_dict()
    log.info("%s: %d file(s) in %s (%s)", manifest, len(results), dest,
             ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
    return out


def fetch_file(url: str, target: str | Path, sha256: str | None, size: int | None = None, retries: int = 5,
               backoff: float = 1.0, timeout: float = 60, progress: bool = True,
               base: str | Path | None = None) -> Path:
    """Fetch one file (``http(s)://``, ``file://`` or a local path, relative ones against
    ``base``) into ``target`` with the manifest downloader's resume, retries and checks.

    Unlike a manifest row, the SHA-256 is required (a file fetched here is code-adjacent:
    pretrained weights); a target that already matches is kept. Raises :class:`InputError`
    without a valid ``sha256``, :class:`ChecksumMismatch` for wrong bytes, :class:`DownloadError`
    for network failures.
    """
    sha = (sha256 or "").strip().lower().removeprefix("sha256:")
    if not _SHA_RE.match(sha):
        raise InputError(url, "a sha256 (64 hexadecimal digits) to verify the file against", repr(sha256))
    target = Path(target).resolve()
    job = _Job(url=url, target=target, rel=target.name, sha256=sha, origin="given", size=size,
               local=_local_source(url, Path(base or Path.cwd()).resolve()))
    ctx = _Ctx(retries, backoff, timeout, _Progress(progress), threading.Event())
    try:
        res = _fetch(job, ctx)
    finally:
        ctx.bar.close()
    log.info("%s: %s %s (%d bytes, sha256 %s)", url, res.action, target, res.size, res.sha256)
    return target


# --------------------------------------------------------------------------- planning


def _raw_paths(manifest: Path) -> list[str]:
    """``path`` column as written (read_manifest makes it absolute against the manifest)."""
    return list(pd.read_csv(manifest, sep=table_separator(manifest), dtype=str, keep_default_na=False)["path"])


def _plan(df: pd.DataFrame, raw_paths: list[str], manifest: Path, dest: Path,
          records: "_Records") -> list[_Job]:
    base = manifest.resolve().parent
    jobs: dict[Path, _Job] = {}
    in_place: dict[Path, _Job] = {}
    for i, row in df.iterrows():
        url = str(row.url).strip()
        where = f"{manifest} row {i + 2}"
        sha = str(row.sha256).strip().lower()
        if sha.startswith("sha256:"):
            sha = sha[len("sha256:"):]
        if sha and not _SHA_RE.match(sha):
            raise InputError(where, "sha256 as 64 hexadecimal digits (or empty)", repr(row.sha256))
        size_text = str(row["size"]).strip()
        if size_text and not size_text.isdigit():
            raise InputError(where, "size as a whole number of bytes (or empty)", repr(row["size"]))
        size = int(size_text) if size_text else None
        if not url:  # a file already local: checked where it is, never moved or deleted
            target = Path(row.path)
            if target in in_place:
                in_place[target].rows.append(i)
            else:
                in_place[target] = _Job(url="", target=target, rel=str(target), sha256=sha or None,
                                        origin="manifest", size=size, rows=[i], local=target, in_place=True)
            continue
        rel = _dest_relpath(raw_paths[i].strip(), url, dest, where)
        target = (dest / rel).resolve()
        if not target.is_relative_to(dest):
            raise InputError(where, f"a path inside the destination {dest}", repr(raw_paths[i]))
        rel = str(target.relative_to(dest))
        origin = "manifest"
        if not sha:
            sha, origin = records.lookup(url) or ("", "")
        local = _local_source(url, base)
        if target in jobs:
            other = jobs[target]
            if other.url != url:
                raise InputError(where, f"one source per destination file {rel}",
                                 f"both {other.url} and {url}")
            other.rows.append(i)
            continue
        jobs[target] = _Job(url=url, target=target, rel=rel, sha256=sha or None, origin=origin,
                            size=size, rows=[i], local=local)
    return list(jobs.values()) + list(in_place.values())


def _dest_relpath(raw: str, url: str, dest: Path, where: str) -> str:
    if raw:
        p = Path(raw)
        if p.is_absolute():
            if not p.resolve().is_relative_to(dest):
                raise InputError(where, f"a path relative to the download destination (or inside {dest})",
                                 repr(raw))
            return str(p.resolve().relative_to(dest))
        return raw
    if "://" in url:
        name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    else:
        name = Path(url).name
    if not name:
        raise InputError(where, "a path, or a url ending in a file name", repr(url))
    return name


def _local_source(url: str, base: Path) -> Path | None:
    """Source path for ``file://`` and plain-path urls; None for network schemes."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "file":
        parts = urllib.parse.urlsplit(url)
        return Path(urllib.request.url2pathname(parts.path))
    if scheme in ("http", "https"):
        return None
    if "://" in url:
        raise InputError(url, "an http(s):// or file:// url, or a local path", f"scheme {scheme!r}")
    p = Path(os.path.expanduser(url))
    return p if p.is_absolute() else base / p


# --------------------------------------------------------------------------- records


class _Records:
    """Checksums trusted on first use: ``dest/checksums.recorded.csv`` plus one beside the manifest.

    The one beside the manifest makes a later download into a *fresh* destination verify
    against the first download instead of trusting the server again.
    """

    def __init__(self, dest_file: Path, side_file: Path):
        self.files = [dest_file, side_file]
        self._lock = threading.Lock()
        self.tables = [self._read(f) for f in self.files]

    @staticmethod
    def _read(path: Path) -> pd.DataFrame:
        if not path.exists():
            return pd.DataFrame(columns=RECORD_COLUMNS)
        t = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in ("url", "sha256") if c not in t.columns]
        if missing:
            raise InputError(path, f"a checksum record with columns {RECORD_COLUMNS}", f"missing {missing}")
        for col in RECORD_COLUMNS:
            if col not in t.columns:
                t[col] = ""
        return t[RECORD_COLUMNS]

    def lookup(self, url: str) -> tuple[str, str] | None:
        found: list[tuple[str, Path]] = []
        for table, f in zip(self.tables, self.files):
            hit = table[table.url == url]
            if len(hit):
                found.append((str(hit.sha256.iloc[-1]).lower(), f))
        if not found:
            return None
        if len({s for s, _ in found}) > 1:
            raise InputError(found[1][1], f"the sha256 recorded for {url} in {found[0][1]}: {found[0][0]}",
                             found[1][0])
        return found[0][0], f"recorded on first download in {found[0][1]}"

    def add(self, url: str, rel: str, sha: str, size: int) -> None:
        row = {"url": url, "path": rel, "sha256": sha, "size": str(size),
               "recorded_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        with self._lock:
            for k, f in enumerate(self.files):
                t = self.tables[k]
                t = pd.concat([t[t.url != url], pd.DataFrame([row])], ignore_index=True)
                self.tables[k] = t
                try:
                    with atomic_path(f) as tmp:
                        t.to_csv(tmp, index=False)
                except OSError as exc:  # e.g. a read-only manifest folder: the dest record still holds
                    log.warning("could not write checksum record %s: %s", f, exc)


# --------------------------------------------------------------------------- transfers


def _fetch(job: _Job, ctx: _Ctx) -> _Result:
    if ctx.cancel.is_set():
        raise _Cancelled(job.url)
    if job.in_place:
        return _verify_in_place(job)
    existing = _check_existing(job)
    if existing is not None:
        return existing
    if job.local is not None:
        return _link(job, ctx.bar)
    return _http(job, ctx)


def _verify_in_place(job: _Job) -> _Result:
    """A row without url: the file (or slice folder) must exist; size and sha256 when given."""
    t = job.target
    if not t.exists():
        raise InputError(t, "the local file or folder this manifest row names (it has no url)",
                         "nothing at that path")
    if t.is_dir():
        if job.sha256 is not None or job.size is not None:
            raise InputError(t, "sha256/size only for files (this row names a folder)",
                             f"sha256={job.sha256 or ''} size={job.size or ''}")
        return _Result(job, "present", "", 0, newly_recorded=False)
    size = t.stat().st_size
    if job.size is not None and size != job.size:
        raise InputError(t, f"{job.size} bytes", f"{size} bytes")
    if job.sha256 is None:
        return _Result(job, "present", "", size, newly_recorded=False)
    digest = sha256_file(t)
    if digest != job.sha256:
        raise ChecksumMismatch(t, job.sha256, digest, "the local file (left untouched)", job.origin)
    return _Result(job, "verified", digest, size, newly_recorded=False)


def _check_existing(job: _Job) -> _Result | None:
    """Skip a destination file whose checksum matches; drop a stale one."""
    t = job.target
    if not t.is_file():
        return None
    size = t.stat().st_size
    if job.size is not None and size != job.size:
        log.warning("%s: size %d, expected %d; fetching again", t, size, job.size)
        t.unlink()
        return None
    digest = sha256_file(t)
    if job.sha256 is None:  # present but never verified: trust on first use, and record it
        return _Result(job, "skipped", digest, size, newly_recorded=True)
    if digest == job.sha256:
        return _Result(job, "skipped", digest, size, newly_recorded=False)
    log.warning("%s: sha256 %s, expected %s (%s); fetching again", t, digest, job.sha256, job.origin)
    t.unlink()
    return None


def _finish(job: _Job, tmp: Path, digest: str, size: int, action: str) -> _Result:
    """Check size and checksum of a complete temporary file, then move it into place."""
    if job.size is not None and size != job.size:
        _unlink(tmp)
        raise InputError(job.target, f"{job.size} bytes for {job.url}", f"{size} bytes")
    if job.sha256 is not None and digest != job.sha256:
        _unlink(tmp)
        raise ChecksumMismatch(job.target, job.sha256, digest, job.url, job.origin)
    os.replace(tmp, job.target)
    return _Result(job, action, digest, size, newly_recorded=job.sha256 is None)


def _link(job: _Job, bar: _Progress) -> _Result:
    src = job.local
    assert src is not None
    if not src.is_file():
        raise InputError(src, f"a local file for {job.url}",
                         "nothing at that path" if not src.exists() else "not a file")
    job.target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{threading.get_ident()}"
    tmp = job.target.with_name(f"{job.target.name}{PARTIAL_SUFFIX}.{tag}.link")
    _unlink(tmp)
    size = src.stat().st_size
    bar.add_total(size)
    try:
        try:
            os.link(src, tmp)
            action = "linked"
            digest = sha256_file(tmp)
        except OSError:  # other filesystem, no hard links: copy, hashing on the way
            action = "copied"
            h = hashlib.sha256()
            with open(src, "rb") as fi, open(tmp, "wb") as fo:
                while chunk := fi.read(CHUNK):
                    h.update(chunk)
                    fo.write(chunk)
            digest = h.hexdigest()
        bar.update(size)
        return _finish(job, tmp, digest, size, action)
    except BaseException:
        _unlink(tmp)
        raise


@dataclass
class _Transfer:
    """What one file's attempts share: the part file, the server's validator, the bar's view."""

    part: Path
    validator: str | None = None  # ETag / Last-Modified, sent as If-Range on resumes
    counted: int = 0  # bytes of this file added to the bar's total
    shown: int = 0  # bytes of this file counted as done on the bar
    resumed: bool = False  # the part holds bytes from an earlier request

    def show(self, bar: _Progress, n: int) -> None:
        bar.update(n - self.shown)
        self.shown = n


def _http(job: _Job, ctx: _Ctx) -> _Result:
    part = job.target.with_name(job.target.name + PARTIAL_SUFFIX)
    job.target.parent.mkdir(parents=True, exist_ok=True)
    if part.exists() and job.sha256 is None:
        # left by an earlier run, and nothing to verify a splice against: start over
        log.info("%s: discarding partial download (no checksum to verify a resume against)", part)
        _unlink(part)
    tr = _Transfer(part, resumed=part.exists() and part.stat().st_size > 0)
    failures = 0
    fresh_retry_done = False
    while True:
        try:
            digest, size = _attempt(job, tr, ctx)
        except _Retry as exc:
            failures = 0 if exc.progressed else failures + 1
            if failures > ctx.retries:
                raise DownloadError(f"{job.url}: giving up after {ctx.retries + 1} attempt(s) without "
                                    f"progress; last error: {exc}", url=job.url) from None
            delay = min(ctx.backoff * 2 ** max(failures - 1, 0), MAX_DELAY_S)
            if exc.delay is not None:
                delay = min(max(delay, exc.delay), MAX_DELAY_S)
            log.info("%s: %s; retrying in %.2f s", job.url, exc, delay)
            if ctx.cancel.wait(delay):
                raise _Cancelled(job.url) from None
            continue
        except (DownloadError, _Cancelled, KeyboardInterrupt, SystemExit):
            raise  # the part stays: a later run can resume it
        except BaseException:
            _unlink(part)  # a part we cannot vouch for
            raise
        action = "resumed" if tr.resumed else "downloaded"
        try:
            return _finish(job, part, digest, size, action)
        except ChecksumMismatch:
            tr.show(ctx.bar, 0)
            if tr.resumed and not fresh_retry_done:
                # the kept bytes may be the culprit: one clean download decides
                log.warning("%s: checksum mismatch after resuming; downloading from scratch", job.url)
                fresh_retry_done = True
                tr.validator, tr.resumed = None, False
                continue
            raise


def _attempt(job: _Job, tr: _Transfer, ctx: _Ctx) -> tuple[str, int]:
    """One GET; returns (sha256, size) of the complete part, or raises _Retry / an error."""
    part = tr.part
    have = part.stat().st_size if part.exists() else 0
    if job.size is not None and have > job.size:
        _unlink(part)
        have = 0
    h = hashlib.sha256()
    if have and job.size is not None and have == job.size:
        tr.resumed = True
        return sha256_file(part, h), have
    headers = {"User-Agent": "selma3d-download/1", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if tr.validator:
            headers["If-Range"] = tr.validator
    req = urllib.request.Request(job.url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=ctx.timeout)
    except urllib.error.HTTPError as exc:
        retry_after = _retry_after(exc.headers)
        exc.close()
        if exc.code == 416 and have:  # nothing past what we hold: the part may be complete
            tr.resumed = True
            return sha256_file(part, h), have
        if exc.code in RETRY_STATUS:
            raise _Retry(f"HTTP {exc.code} {exc.reason}", delay=retry_after) from None
        raise DownloadError(f"{job.url}: HTTP {exc.code} {exc.reason} (not retried)",
                            url=job.url, status=exc.code) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise DownloadError(f"{job.url}: TLS certificate not trusted: {exc.reason}",
                                url=job.url) from None
        raise _Retry(f"connection failed: {exc.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Retry(f"connection failed: {type(exc).__name__}: {exc}") from None

    with resp:
        start, total = _expected_total(resp, have)
        if start != have and resp.status == 206:  # not the range asked for: drop the part, start over
            _unlink(part)
            raise _Retry(f"unexpected Content-Range {resp.headers.get('Content-Range')!r} for a resume "
                         f"from byte {have}")
        validator = resp.headers.get("ETag")
        if not validator or validator.startswith("W/"):
            validator = resp.headers.get("Last-Modified")
        tr.validator = validator
        if resp.status == 206 and have:
            sha256_file(part, h)
            tr.resumed = True
            mode = "ab"
        else:  # 200: a first request, or a server that ignored Range: start over
            if have:
                log.info("%s: server ignored the Range request; restarting from byte 0", job.url)
            tr.resumed = False
            have = 0
            mode = "wb"
        if total is not None and job.size is not None and total != job.size:
            raise InputError(job.target, f"{job.size} bytes for {job.url}",
                             f"the server announces {total} bytes")
        if total is not None and tr.counted != total:
            ctx.bar.add_total(total - tr.counted)
            tr.counted = total
        tr.show(ctx.bar, have)
        got = 0
        with open(part, mode) as f:
            while True:
                if ctx.cancel.is_set():
                    raise _Cancelled(job.url)
                try:
                    chunk = resp.read(CHUNK)
                except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                    f.flush()
                    raise _Retry(f"transfer interrupted after {have + got} bytes: {type(exc).__name__}: "
                                 f"{exc}", progressed=got > 0) from None
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                got += len(chunk)
                tr.show(ctx.bar, have + got)
            f.flush()
            os.fsync(f.fileno())
    size = have + got
    expected = total if total is not None else job.size
    if expected is not None and size < expected:
        raise _Retry(f"connection closed after {size} of {expected} bytes", progressed=got > 0)
    return h.hexdigest(), size


def _expected_total(resp, have: int) -> tuple[int | None, int | None]:
    """(first byte, full size) announced: Content-Range of a 206, else Content-Length of a 200."""
    if resp.status == 206:
        m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not m:
            return None, None
        return int(m.group(1)), (int(m.group(3)) if m.group(3) != "*" else None)
    length = resp.headers.get("Content-Length")
    return 0, (int(length) if length and length.isdigit() else None)


def _retry_after(headers) -> float | None:
    """Seconds from a numeric ``Retry-After`` header (HTTP-date forms are ignored)."""
    value = headers.get("Retry-After", "") if headers is not None else ""
    return float(value) if value and value.strip().isdigit() else None


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="manifest CSV/TSV with url (and sha256, size) columns")
    parser.add_argument("dest", help="destination folder; receives the files and manifest.csv")
    parser.add_argument("--workers", type=int, default=4, help="parallel transfers (default 4)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries per file after failures without progress (default 5)")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="first retry delay in seconds, doubled each time (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from selma3d.core.logs import setup_logging

    setup_logging()  # retries and recorded checksums are worth seeing, on the command's own stderr
    try:
        df = download_manifest(args.manifest, args.dest, workers=args.workers, retries=args.retries,
                               backoff=getattr(args, "backoff", 1.0), timeout=getattr(args, "timeout", 60.0),
                               progress=not getattr(args, "no_progress", False))
    except (InputError, DownloadError) as exc:
        print(f"selma3d download: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"selma3d download: {exc}", file=sys.stderr)
        return 1
    print(f"{len(df)} row(s); local manifest: {Path(args.dest) / 'manifest.csv'}")
    return 0
