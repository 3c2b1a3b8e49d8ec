"""Paths that may be local or any pyarrow filesystem URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``).

Every stage reads and writes through these helpers, so datasets, checkpoints, runs and indexes may
live on an object store: small files (schema.json, checkpoint.json, feature tables, vocabularies) are
read through ``pyarrow.fs``, parquet splits are streamed from it, and what must be a local file
(``torch.load``, FAISS, matplotlib) is copied to or from a local temporary file. Credentials and
endpoints come from the usual environment (``AWS_*``, ``AWS_ENDPOINT_URL``, ``GOOGLE_*``), as for pyarrow.

Every index file is written to a local temporary file first (FAISS writes local files) and copied
through ``pyarrow.fs``; reading works the same way in reverse. :func:`publish` moves a staging
directory into place (see its docstring for what "atomic" means on object stores).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs as pafs

CHUNK = 1 << 20


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` strings (anything pyarrow resolves to a non-local filesystem or file://)."""
    return "://" in str(path)


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI; local paths are made absolute."""
    s = str(path)
    if is_uri(s):
        return pafs.FileSystem.from_uri(s)
    return pafs.LocalFileSystem(), os.path.abspath(s)


def normalize(path: str | os.PathLike) -> str:
    """A URI unchanged; a local path made absolute (workers on other processes resolve it the same)."""
    return str(path) if is_uri(path) else os.path.abspath(os.path.expanduser(str(path)))


def parent(path: str | os.PathLike) -> str:
    """The directory holding ``path`` (a URI stays a URI; a local path is made absolute first)."""
    return normalize(path).rstrip("/").rsplit("/", 1)[0]


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path components with ``/`` (works for URIs and POSIX paths)."""
    out = str(base).rstrip("/")
    for p in parts:
        out += "/" + str(p).strip("/")
    return out


def exists(path: str | os.PathLike) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_file(path: str | os.PathLike) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def is_dir(path: str | os.PathLike) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def is_nonempty(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file or a directory with at least one entry."""
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        return False
    if info.type == pafs.FileType.File:
        return True
    return len(fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))) > 0


def makedirs(path: str | os.PathLike) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def delete_dir(path: str | os.PathLike) -> None:
    """Remove a directory tree if it exists (no error when it does not)."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type != pafs.FileType.NotFound:
        fs.delete_dir(p)


def list_files(path: str | os.PathLike) -> list[str]:
    """Relative paths (``/``-separated, sorted) of every file under directory ``path``."""
    fs, p = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    root = p.rstrip("/") + "/"
    return sorted(i.path[len(root):] for i in infos if i.type == pafs.FileType.File)


def files_with_suffix(directory: str | os.PathLike, suffix: str) -> list[str]:
    """Sorted full paths (URIs for a URI ``directory``) of the files directly in ``directory`` whose name
    ends with ``suffix``; empty when the directory is missing. Hidden files (``.``, ``_``) are skipped."""
    fs, p = resolve(directory)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
                   and not i.base_name.startswith((".", "_")))
    return [join(directory, n) if is_uri(directory) else os.path.join(p, n) for n in names]


def read_bytes(path: str | os.PathLike) -> bytes:
    """Whole file contents. Raises FileNotFoundError when missing."""
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    """Whole file as UTF-8 text. Raises FileNotFoundError when missing."""
    return read_bytes(path).decode("utf-8")


def read_json(path: str | os.PathLike, error: type[Exception], missing: str):
    """The JSON document at ``path`` (local or URI).

    Raises:
        error: ``"<path>: <missing>"`` when the file does not exist, ``"<path>: not valid JSON: ..."``
            when it is not UTF-8 JSON (chained to the original exception).
    """
    try:
        return json.loads(read_text(path))
    except FileNotFoundError as e:
        raise error(f"{path}: {missing}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON: {e}") from e


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    fs, p = resolve(path)
    with fs.open_output_stream(p) as f:
        f.write(data)


def upload(local: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy local file ``local`` to ``dest`` (local path or URI), creating parent directories."""
    fs, p = resolve(dest)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with open(local, "rb") as src, fs.open_output_stream(p) as out:
        while block := src.read(CHUNK):
            out.write(block)


def upload_dir(local: str | os.PathLike, dest: str | os.PathLike, last: str | None = None) -> None:
    """Copy every file under local directory ``local`` into ``dest`` (local path or URI), keeping relative
    paths; ``last`` (a relative path, e.g. ``schema.json``) is copied after every other file, so a
    reader that waits for it never sees it before the files it describes."""
    root = Path(local)
    files = sorted((p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
                   key=lambda rel: rel == last)
    for rel in files:
        upload(root / rel, join(dest, rel))


def download(src: str | os.PathLike, local: str | os.PathLike) -> None:
    """Copy ``src`` (local path or URI) to local file ``local``. Raises FileNotFoundError when missing."""
    fs, p = resolve(src)
    with fs.open_input_stream(p) as f, open(local, "wb") as out:
        while block := f.read(CHUNK):
            out.write(block)


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file read in 1 MiB chunks. Raises FileNotFoundError when missing."""
    fs, p = resolve(path)
    h = hashlib.sha256()
    with fs.open_input_stream(p) as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def local_copy(path: str | os.PathLike) -> tuple[Path, bool]:
    """A local directory with the contents of ``path``: (path itself, False) when local, else a fresh
    temporary copy (dir, True) that the caller removes with ``shutil.rmtree``."""
    if not is_uri(path) or str(path).startswith("file://"):
        return Path(resolve(path)[1]), False
    tmp = Path(tempfile.mkdtemp(prefix="twotower-fetch-"))
    for rel in list_files(path):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        download(join(path, rel), tmp / rel)
    return tmp, True


def staging_dir(out: str | os.PathLike) -> str:
    """A fresh sibling of ``out`` (same filesystem, so the final rename stays on one device/bucket)."""
    fs, p = resolve(out)
    parent, name = p.rstrip("/").rsplit("/", 1)
    staging = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
    fs.create_dir(staging, recursive=True)
    return f"{str(out).split('://')[0]}://{staging}" if is_uri(out) else staging


def publish(staging: str, out: str | os.PathLike, overwrite: bool = False, last: str = "manifest.json") -> None:
    """Move the finished ``staging`` directory to ``out``.

    Local filesystems: one ``rename`` (a pre-existing ``out`` is renamed aside first and removed after),
    so ``out`` is either the old or the complete new directory. Object stores have no directory rename:
    files are copied into ``out`` with ``last`` (the manifest) copied last, so a reader never sees a
    manifest before every file it lists exists. ``staging`` is removed in both cases.

    Raises:
        FileExistsError: ``out`` is non-empty and ``overwrite`` is False.
    """
    if is_nonempty(out) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; use overwrite (--overwrite) to replace it")
    fs, p = resolve(out)
    _, sp = resolve(staging)
    if isinstance(fs, pafs.LocalFileSystem):
        old = None
        if os.path.lexists(p):
            old = f"{os.path.dirname(p)}/.{os.path.basename(p)}.old-{uuid.uuid4().hex[:8]}"
            os.rename(p, old)
        try:
            os.rename(sp, p)
        except BaseException:
            if old is not None:
                os.rename(old, p)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.unlink(old)
        return
    copy_publish(fs, sp, p, last)


def copy_publish(fs: pafs.FileSystem, staging: str, out: str, last: str = "manifest.json") -> None:
    """Object-store publish (paths inside ``fs``): delete ``out``, copy every file of ``staging`` into it
    with ``last`` copied last, then delete ``staging``."""
    if fs.get_file_info(out).type != pafs.FileType.NotFound:
        fs.delete_dir(out)
    infos = fs.get_file_info(pafs.FileSelector(staging, recursive=True))
    files = sorted(i.path[len(staging.rstrip("/")) + 1:] for i in infos if i.type == pafs.FileType.File)
    for rel in sorted(files, key=lambda r: r == last):
        fs.create_dir(f"{out}/{rel}".rsplit("/", 1)[0], recursive=True)
        fs.copy_file(f"{staging}/{rel}", f"{out}/{rel}")
    fs.delete_dir(staging)
