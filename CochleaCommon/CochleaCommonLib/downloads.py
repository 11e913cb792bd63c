"""Checksums and verified downloads for model weights (and any other on-demand data).

Why separate from the registry: hashing and fetching know nothing about models, and the registry
tests inject their own fetcher. A download goes to a temporary name beside its destination, is
checked against the expected SHA256 and only then moved into place, so a cut connection, a cancel or a
proxy's HTML error page can never leave a file that looks like valid weights.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Callable

from .atomic import atomic_output
from .errors import CochleaError, ModelWeightsError
from .progress import Progress

#: ``fetcher(url, dest_path, progress)`` writes the resource at ``url`` to ``dest_path``.
Fetcher = Callable[[str, Path, Progress], None]

#: Seconds without data before a download is abandoned.
DOWNLOAD_TIMEOUT_S = 60.0

_CHUNK = 1 << 20
_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def sha256_file(path: str | os.PathLike, progress: Progress | None = None, *, use_cache: bool = True) -> str:
    """Hex SHA256 of a file, remembered per (path, modification time, size) so it is computed once."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if use_cache:
        with _hash_lock:
            cached = _hash_cache.get(key)
        if cached is not None:
            return cached
    prog = Progress.ensure(progress)
    digest = hashlib.sha256()
    done = 0
    with open(p, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if st.st_size:
                prog.update(done / st.st_size, f"Checking {p.name}")
    value = digest.hexdigest()
    if use_cache:
        with _hash_lock:
            _hash_cache[key] = value
    return value


def default_fetcher(url: str, dest: Path, progress: Progress) -> None:
    """Download ``url`` (http, https or file) to ``dest`` with urllib, reporting bytes received.

    Honours the usual ``HTTPS_PROXY``/``HTTP_PROXY`` environment variables (urllib reads them). Network
    failures become :class:`ModelWeightsError` naming the address and the reason.
    """
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "CochleaToolkit"})
    name = url.rstrip("/").rsplit("/", 1)[-1]
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                text = f"Downloading {name}: {received / 1e6:.1f} MB"
                if total:
                    progress.update(received / total, f"{text} of {total / 1e6:.1f} MB")
                else:
                    progress.update(progress.fraction, text)
    except urllib.error.HTTPError as exc:
        raise ModelWeightsError(
            f"The download from {url} failed: the server answered {exc.code} {exc.reason}.") from exc
    except urllib.error.URLError as exc:
        raise ModelWeightsError(f"The download from {url} failed: {exc.reason}. Check the internet connection "
                                "(and the proxy settings HTTPS_PROXY if you are behind a firewall).") from exc
    except (TimeoutError, OSError) as exc:
        raise ModelWeightsError(f"The download from {url} failed: {exc}.") from exc


def fetch_verified(url: str, dest: str | os.PathLike, sha256: str, *, fetcher: Fetcher | None = None,
                   progress: Progress | None = None) -> Path:
    """Fetch ``url`` to a temporary file beside ``dest``, check its SHA256, then move it onto ``dest``.

    On a checksum mismatch the downloaded file is deleted and :class:`ModelWeightsError` names the
    expected and actual hashes. On any error or cancellation ``dest`` is left as it was.
    """
    prog = Progress.ensure(progress)
    target = Path(dest)
    fetch = fetcher or default_fetcher
    with atomic_output(target) as tmp:
        try:
            fetch(url, tmp, prog.sub(0.0, 0.95))
        except CochleaError:
            raise
        except OSError as exc:
            raise ModelWeightsError(f"The download from {url} failed: {exc}.") from exc
        if not tmp.is_file():
            raise ModelWeightsError(f"The download from {url} produced no file.")
        actual = sha256_file(tmp, prog.sub(0.95, 1.0), use_cache=False)
        if actual != sha256.lower():
            raise ModelWeightsError(
                f"The file downloaded from {url} does not have the expected checksum "
                f"(expected SHA256 {sha256.lower()}, got {actual}); it was deleted. The server may have "
                "returned an error page (proxy, login portal) or a different version of the file."
            )
    prog.update(1.0)
    return target
