"""Finding MovieLens files locally, or downloading them from GroupLens with sha256 verification.

Search order of :func:`find_movielens`:

1. the explicit ``data_dir`` (holding ``<variant>/`` or being the variant folder itself);
2. ``$TWOTOWER_DATA_DIR`` (holding ``<variant>/``);
3. ``<repository root>/../shared/data`` (``/work/main`` -> ``/work/shared/data``);
4. a previous download/extraction in the cache dir (``$TWOTOWER_CACHE_DIR``, default
   ``~/.cache/twotower``) under ``movielens/``;
5. download ``https://files.grouplens.org/datasets/movielens/<variant>.zip`` into the cache.

A ``<variant>.zip`` found in a searched folder (e.g. ``ml-latest-small/ml-latest-small.zip``) is
extracted into the cache and used. Downloads are always checked against a sha256. No archive
checksum is built in (:data:`KNOWN_SHA256` holds ``None`` for every variant: none could be verified
here), so a download needs ``sha256=`` (``--sha256`` on the CLI) or it is refused with a message.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from twotower.data.movielens import LAYOUTS

log = logging.getLogger("twotower.data")
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{variant}.zip"
KNOWN_SHA256: dict[str, str | None] = {v: None for v in LAYOUTS}
_FOLDER_ALIASES = {"ml-10m": ("ml-10M100K",)}


class DownloadError(RuntimeError):
    """A download was refused (no checksum), failed, or its checksum did not match."""


def repo_root() -> Path:
    """The repository root (the folder holding this package's source folders)."""
    return Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """``$TWOTOWER_CACHE_DIR`` or ``~/.cache/twotower``."""
    return Path(os.environ.get("TWOTOWER_CACHE_DIR") or Path.home() / ".cache" / "twotower")


def has_variant_files(folder: Path, variant: str) -> bool:
    """True when ``folder`` holds the ratings file of ``variant`` (plain or ``.gz``)."""
    name = LAYOUTS[variant].ratings
    return (folder / name).is_file() or (folder / f"{name}.gz").is_file()


def _candidates(base: Path, variant: str, itself: bool) -> list[Path]:
    names = (variant,) + _FOLDER_ALIASES.get(variant, ())
    return [base / n for n in names] + ([base] if itself else [])


def download(url: str, dest: str | Path, sha256: str | None, timeout: float = 60.0) -> Path:
    """Download ``url`` (``https://``, ``file://`` ...) to ``dest``, verifying its sha256.

    The data goes to ``dest + ".part"`` first and is renamed to ``dest`` only after the checksum
    matches; the partial file is deleted on any failure.

    Raises:
        DownloadError: ``sha256`` is None/empty (refused), the transfer failed, or the checksum
            does not match (message gives expected and actual digests).
    """
    if not sha256:
        raise DownloadError(f"refusing to download {url} without a sha256 to verify it against; "
                            f"pass sha256=... (CLI: --sha256 HEX)")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest, size, t0 = hashlib.sha256(), 0, time.time()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
                size += len(chunk)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} failed: {e}") from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if actual != sha256.strip().lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; "
                            f"the partial file was deleted")
    os.replace(part, dest)
    log.info("downloaded %s (%d bytes) in %.1fs", url, size, time.time() - t0)
    return dest


def _extract(archive: Path, variant: str, target_root: Path) -> Path:
    """Extract ``archive`` and move the folder holding the variant's files to
    ``target_root/<variant>`` (atomically); returns that folder."""
    final = target_root / variant
    if has_variant_files(final, variant):
        return final
    target_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant}.tmp-", dir=target_root))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        found = [p for p in [tmp, *sorted(tmp.rglob("*"))] if p.is_dir()
                 and has_variant_files(p, variant)]
        if not found:
            raise FileNotFoundError(f"{archive} holds no {LAYOUTS[variant].ratings} for {variant}")
        os.rename(found[0], final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted %s into %s", archive, final)
    return final


def find_movielens(variant: str, data_dir: str | Path | None = None, *, allow_download: bool = True,
                   sha256: str | None = None) -> Path:
    """Return the folder holding ``variant``'s MovieLens files (search order in module docs).

    Args:
        variant: one of ``ml-100k``, ``ml-1m``, ``ml-10m``, ``ml-20m``, ``ml-25m``,
            ``ml-latest-small``.
        data_dir: optional folder holding ``<variant>/`` or being that folder.
        allow_download: try GroupLens when nothing is found locally.
        sha256: checksum of the archive for the download (overrides :data:`KNOWN_SHA256`).

    Raises:
        ValueError: unknown variant. FileNotFoundError: not found locally and no download (the
            message lists the folders searched and why the download was not possible).
    """
    if variant not in LAYOUTS:
        raise ValueError(f"unknown MovieLens variant {variant!r}; known: {', '.join(LAYOUTS)}")
    bases: list[tuple[Path, bool]] = []
    if data_dir is not None:
        bases.append((Path(data_dir), True))
    if os.environ.get("TWOTOWER_DATA_DIR"):
        bases.append((Path(os.environ["TWOTOWER_DATA_DIR"]), False))
    bases.append(((repo_root().parent / "shared" / "data").resolve(), False))
    extracted = cache_dir() / "movielens" / "extracted"
    bases.append((extracted, False))
    searched = []
    for base, itself in bases:
        for folder in _candidates(base, variant, itself):
            searched.append(str(folder))
            if has_variant_files(folder, variant):
                return folder
        for archive in (base / f"{variant}.zip", base / variant / f"{variant}.zip"):
            if archive.is_file():
                return _extract(archive, variant, extracted)
    reason = "downloads disabled"
    if allow_download:
        archive = cache_dir() / "movielens" / f"{variant}.zip"
        try:
            if not archive.is_file():
                download(GROUPLENS_URL.format(variant=variant), archive,
                         sha256 or KNOWN_SHA256.get(variant))
            return _extract(archive, variant, extracted)
        except DownloadError as e:
            reason = str(e)
    raise FileNotFoundError(f"MovieLens {variant} not found; searched {', '.join(searched)}; "
                            f"{reason}")
