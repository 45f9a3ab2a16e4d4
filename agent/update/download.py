"""Fetch a bundle over HTTPS (HTTP for labs and tests) with resume, a length cap and its SHA-256.

As TUF fetches target files: the expected length and hash come from a signed document; the download
stops at the expected length (an endless or longer response is refused, TUF "endless data"
attack), and the hash of the whole file is checked before anything reads it (verify, then parse).
An interrupted download resumes with ``Range: bytes=N-`` (RFC 9110 14.2); a server that answers
200 instead of 206 sends the whole file again. Mirrors are tried in order; a mirror serving wrong
bytes loses its partial file and the next one starts from zero.
"""

from __future__ import annotations

__all__ = ["DownloadLimits", "fetch"]

import asyncio
import hashlib
import http.client
import os
import re
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from agent.update.errors import DownloadError

log = structlog.get_logger()
# One writer of a partial file at a time: a cancelled fetch's worker thread finishes its current
# chunk after the coroutine is gone, and a restarted fetch must not interleave with it.
_WRITER = threading.Lock()
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)", re.ASCII)


@dataclass(frozen=True, slots=True)
class DownloadLimits:
    chunk_bytes: int = 64 * 1024
    timeout_s: float = 30.0
    attempts_per_url: int = 3  # a dropped connection resumes; after this many, the next mirror


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _connect(url: str, timeout: float, ca_file: Path | None) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"unsupported URL {url[:200]!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx), target
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout), target


def _attempt(
    url: str,
    part: Path,
    length: int,
    limits: DownloadLimits,
    ca_file: Path | None,
    progress: Callable[[int], None],
    stop: threading.Event,
) -> None:
    """One HTTP request that continues ``part`` towards ``length`` bytes."""
    have = part.stat().st_size if part.exists() else 0
    if have > length:
        part.unlink()
        have = 0
    if have == length:
        return
    conn, target = _connect(url, limits.timeout_s, ca_file)
    try:
        headers = {"User-Agent": "roomagent-updater"}
        if have:
            headers["Range"] = f"bytes={have}-"
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        if resp.status == 206 and have:
            m = _CONTENT_RANGE.fullmatch(resp.getheader("Content-Range", ""))
            if m is None or int(m.group(1)) != have:
                raise DownloadError(f"{url[:200]}: 206 for the wrong range")
            mode = "ab"
        elif resp.status == 200:
            have, mode = 0, "wb"  # the server ignored the range: start over
        else:
            raise DownloadError(f"{url[:200]}: HTTP {resp.status}")
        declared = resp.getheader("Content-Length")
        if declared is not None and declared.isdigit() and have + int(declared) > length:
            raise DownloadError(f"{url[:200]}: server offers more than {length} bytes", reason="too_large")
        with part.open(mode) as f:
            while not stop.is_set():
                chunk = resp.read(min(limits.chunk_bytes, length - have + 1))
                if not chunk:
                    break
                if have + len(chunk) > length:
                    raise DownloadError(f"{url[:200]}: more than {length} bytes", reason="too_large")
                f.write(chunk)
                have += len(chunk)
                progress(have)
            f.flush()
            os.fsync(f.fileno())
    finally:
        conn.close()


def _fetch_blocking(
    urls: Sequence[str],
    length: int,
    sha256: str,
    dest: Path,
    limits: DownloadLimits,
    ca_file: Path | None,
    progress: Callable[[int], None],
    stop: threading.Event,
) -> None:
    with _WRITER:
        _fetch_locked(urls, length, sha256, dest, limits, ca_file, progress, stop)


def _fetch_locked(
    urls: Sequence[str],
    length: int,
    sha256: str,
    dest: Path,
    limits: DownloadLimits,
    ca_file: Path | None,
    progress: Callable[[int], None],
    stop: threading.Event,
) -> None:
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    last: DownloadError | None = None
    for url in urls:
        for _ in range(limits.attempts_per_url):
            if stop.is_set():
                raise DownloadError("download cancelled")
            try:
                _attempt(url, part, length, limits, ca_file, progress, stop)
            except DownloadError as exc:
                last = exc
                if exc.reason == "too_large":
                    part.unlink(missing_ok=True)
                    break  # this mirror serves wrong data: the next one
                continue
            except (OSError, http.client.HTTPException) as exc:  # dropped connection: resume
                last = DownloadError(f"{url[:200]}: {type(exc).__name__}: {exc}"[:300])
                log.info("update_download_retry", url=url[:200], error=type(exc).__name__)
                continue
            size = part.stat().st_size if part.exists() else 0
            if size < length:
                last = DownloadError(f"{url[:200]}: connection ended at {size} of {length} bytes")
                continue
            # Verify before anything parses the file (TUF 5.7.3: length and hashes of target files).
            digest = _sha256_of(part)
            if digest != sha256:
                part.unlink(missing_ok=True)
                last = DownloadError(
                    f"{url[:200]}: sha256 {digest[:16]}... is not the signed one", reason="hash_mismatch"
                )
                break
            os.replace(part, dest)
            return
    raise last or DownloadError("no URL to download from")


async def fetch(
    urls: Sequence[str],
    length: int,
    sha256: str,
    dest: Path,
    *,
    limits: DownloadLimits | None = None,
    ca_file: Path | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> Path:
    """Download to ``dest`` (resuming ``dest.part``) and check length and SHA-256.

    Blocking I/O runs in a worker thread; cancelling this coroutine stops it at the next chunk.

    Raises:
        DownloadError: every mirror failed; ``reason`` is that of the last failure.
    """
    stop = threading.Event()
    try:
        await asyncio.to_thread(
            _fetch_blocking,
            urls,
            length,
            sha256,
            Path(dest),
            limits or DownloadLimits(),
            ca_file,
            progress,
            stop,
        )
    finally:
        stop.set()
    return Path(dest)
