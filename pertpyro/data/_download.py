"""Download public data files into a local cache, with checksum verification and resumable transfers.

Only the standard library (:mod:`urllib`) does the networking. A download goes to ``<name>.part`` next to its
final path, is verified, and is renamed into place only afterwards, so a cached file is always complete. Each
cached file gets a ``<name>.sha256`` sidecar (``sha256sum`` format) with the checksum computed at download time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit
from urllib.request import Request, urlopen

logger = logging.getLogger(__name__)

#: Environment variable that overrides the default cache directory.
CACHE_ENV_VAR = "PERTPYRO_DATA_DIR"

_CHUNK = 1 << 20  # 1 MiB per read
_USER_AGENT = "pertpyro-data-fetcher (+https://pypi.org/project/pertpyro)"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


def default_cache_dir() -> Path:
    """Directory where downloaded data files are cached.

    Returns
    -------
    ``$PERTPYRO_DATA_DIR`` when that environment variable is set and non-empty, else ``~/.cache/pertpyro``.
    """
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pertpyro"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks.

    Parameters
    ----------
    path
        File to hash.

    Returns
    -------
    Lower-case hexadecimal digest (64 characters).
    """
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Path of the ``.sha256`` sidecar that records the checksum of a cached file.

    Parameters
    ----------
    path
        Cached data file.

    Returns
    -------
    ``<path>.sha256``.
    """
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def read_sidecar(path: str | os.PathLike[str]) -> str | None:
    """Checksum recorded in the ``.sha256`` sidecar of a cached file.

    Parameters
    ----------
    path
        Cached data file (not the sidecar itself).

    Returns
    -------
    The recorded lower-case hex digest, or ``None`` when there is no sidecar or it is unreadable.
    """
    side = sidecar_path(path)
    try:
        text = side.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    digest = text.split()[0].lower() if text else ""
    return digest if _SHA256_RE.match(digest) else None


def _progress_bar():
    """tqdm, imported only when a download starts (keeps ``import pertpyro`` quiet in notebooks)."""
    from tqdm.auto import tqdm

    return tqdm


def fetch(
    url: str,
    *,
    sha256: str | None,
    cache_dir: str | os.PathLike[str] | None = None,
    filename: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` into the cache (or reuse the cached copy) and verify its SHA-256 checksum.

    A cached file whose checksum matches is returned without any network access. Otherwise the file is
    downloaded to ``<filename>.part``; if such a partial file exists from an interrupted download, the transfer
    resumes with an HTTP ``Range`` request (and restarts from zero if the server ignores it). The file is moved to
    its final name only after its checksum is verified, so the cache never holds a truncated file under the final
    name. The checksum computed at download time is written to a ``<filename>.sha256`` sidecar.

    Parameters
    ----------
    url
        ``http://`` or ``https://`` address of the file.
    sha256
        Expected SHA-256 hex digest. ``None`` means "not pinned": nothing is verified, a warning is logged, and the
        computed digest is recorded in the sidecar so that it can be pinned later. A cached, unpinned file is
        reused if it still matches its sidecar (and re-downloaded if it does not).
    cache_dir
        Directory for cached files; default :func:`default_cache_dir` (``$PERTPYRO_DATA_DIR`` or
        ``~/.cache/pertpyro``). Created if missing.
    filename
        Name of the cached file; default the last component of the URL path.
    progress
        Show a ``tqdm`` progress bar while downloading.
    timeout
        Seconds to wait for the server on connect and on each read.

    Returns
    -------
    Path of the verified file in the cache.

    Raises
    ------
    ValueError
        If the downloaded file does not match ``sha256`` (the partial file is deleted), or if an argument is
        malformed.
    RuntimeError
        If the server cannot be reached or the transfer fails. The message names the URL and where to put a
        manually downloaded copy. A partial file is kept so that the next call resumes.
    """
    expected = _normalise_sha256(sha256)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"Only http:// and https:// URLs can be fetched, got {url!r}.")
    name = _check_filename(filename if filename is not None else _filename_from_url(url))
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / name

    if dest.is_file():
        got = file_sha256(dest)
        reference = expected if expected is not None else read_sidecar(dest)
        if reference is None or got == reference:
            logger.info("Using cached %s (sha256 %s).", dest, got)
            if expected is None:
                _warn_unpinned(url, got)
            _write_sidecar(dest, got)
            return dest
        logger.warning(
            "Cached file %s has sha256 %s but %s was expected; downloading it again.",
            dest,
            got,
            reference,
        )
        dest.unlink()

    part = dest.with_name(dest.name + ".part")
    got = _download(url, part, dest=dest, progress=progress, timeout=timeout)
    if expected is not None and got != expected:
        part.unlink(missing_ok=True)
        raise ValueError(
            f"Checksum mismatch for {url}: expected sha256 {expected}, got {got}. "
            "The downloaded file was deleted; the source may have changed or the transfer was corrupted."
        )
    if expected is None:
        _warn_unpinned(url, got)
    os.replace(part, dest)
    _write_sidecar(dest, got)
    logger.info("Downloaded %s to %s (sha256 %s).", url, dest, got)
    return dest


def _download(url: str, part: Path, *, dest: Path, progress: bool, timeout: float) -> str:
    """Download ``url`` into ``part`` (resuming when possible) and return the SHA-256 of the complete file."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        logger.info("Resuming download of %s from byte %d.", url, offset)
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            # Range not satisfiable: the partial file may already be complete, else start again.
            total = _parse_content_range(err.headers.get("Content-Range", ""))[2]
            if total == offset:
                return file_sha256(part)
            logger.warning("Server rejected resuming %s from byte %d; restarting the download.", url, offset)
            part.unlink()
            return _download(url, part, dest=dest, progress=progress, timeout=timeout)
        raise RuntimeError(_network_message(url, dest, f"HTTP error {err.code} ({err.reason})")) from err
    except URLError as err:
        raise RuntimeError(_network_message(url, dest, f"cannot reach the server ({err.reason})")) from err
    except OSError as err:  # timeouts, resets during connect
        raise RuntimeError(_network_message(url, dest, f"connection failed ({err})")) from err

    with response:
        hasher = hashlib.sha256()
        mode = "wb"
        if offset:
            start = _parse_content_range(response.headers.get("Content-Range", ""))[0]
            if response.status == 206 and start == offset:
                mode = "ab"
                with open(part, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        hasher.update(chunk)
            else:
                logger.info("Server did not honour the Range request for %s; restarting from byte 0.", url)
                offset = 0
        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None and length.isdigit() else None
        total = offset + remaining if remaining is not None else None
        received = 0
        try:
            with (
                open(part, mode) as fh,
                _progress_bar()(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                ) as bar,
            ):
                while chunk := response.read(_CHUNK):
                    fh.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except OSError as err:  # connection reset, read timeout
            raise RuntimeError(
                _network_message(url, dest, f"the transfer was interrupted ({err})")
                + f" The partial file {part} was kept; calling again resumes the download."
            ) from err
    if remaining is not None and received != remaining:
        raise RuntimeError(
            _network_message(url, dest, f"the transfer ended after {received} of {remaining} bytes")
            + f" The partial file {part} was kept; calling again resumes the download."
        )
    return hasher.hexdigest()


def _parse_content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """``(first byte, last byte, total size)`` of a ``Content-Range`` header; ``None`` where absent or ``*``."""
    match = _CONTENT_RANGE_RE.match(value.strip())
    if match is None:
        return None, None, None
    first, last, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(last) if last is not None else None,
        int(total) if total is not None and total != "*" else None,
    )


def _network_message(url: str, dest: Path, problem: str) -> str:
    return (
        f"Could not download {url}: {problem}. If this machine has no internet access, download the file "
        f"manually and place it at {dest} (cache directory {dest.parent}; set ${CACHE_ENV_VAR} or pass "
        "cache_dir= to use another directory); it is then used without any network access."
    )


def _warn_unpinned(url: str, digest: str) -> None:
    logger.warning(
        "No sha256 is pinned for %s, so its integrity was not verified. Its sha256 is %s; pass sha256=%r to pin it.",
        url,
        digest,
        digest,
    )


def _write_sidecar(path: Path, digest: str) -> None:
    side = sidecar_path(path)
    if read_sidecar(path) == digest:
        return
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="ascii")
    os.replace(tmp, side)


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not _SHA256_RE.match(digest):
        raise ValueError(f"sha256 must be 64 hexadecimal characters, got {sha256!r}.")
    return digest


def _filename_from_url(url: str) -> str:
    name = posixpath.basename(unquote(urlsplit(url).path))
    if not name:
        raise ValueError(f"Cannot derive a file name from {url!r}; pass filename=.")
    return name


def _check_filename(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"filename must be a plain file name without directories, got {name!r}.")
    return name
