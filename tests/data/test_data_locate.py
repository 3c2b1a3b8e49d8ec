"""Finding MovieLens folders, zip extraction, and checksum-verified downloads (file:// URLs)."""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from twotower.data import locate
from twotower.data.locate import DownloadError, download, find_movielens
from twotower.distributed.sources import prepare_movielens

DATA = Path(os.environ.get("TWOTOWER_DATA_DIR",
                           Path(__file__).resolve().parents[2].parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("TWOTOWER_DATA_DIR", raising=False)
    monkeypatch.setenv("TWOTOWER_CACHE_DIR", str(tmp_path / "cache"))


def test_download_file_url_checksums(tmp_path):
    src = tmp_path / "archive.bin"
    src.write_bytes(b"movielens" * 1000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = download(src.as_uri(), tmp_path / "dl" / "a.bin", digest)
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(DownloadError, match="checksum mismatch.*expected sha256 0{64}"):
        download(src.as_uri(), tmp_path / "dl" / "b.bin", "0" * 64)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["a.bin"]  # no partial file
    with pytest.raises(DownloadError, match="without a sha256"):
        download(src.as_uri(), tmp_path / "dl" / "c.bin", None)
    with pytest.raises(DownloadError, match="failed"):
        download((tmp_path / "missing.zip").as_uri(), tmp_path / "dl" / "d.bin", digest)
    assert not (tmp_path / "dl" / "d.bin.part").exists()


def test_search_order(tmp_path, monkeypatch):
    explicit = tmp_path / "explicit" / "ml-100k"
    explicit.mkdir(parents=True)
    (explicit / "u.data").write_text("1\t1\t1\t1\n")
    env = tmp_path / "env" / "ml-100k"
    env.mkdir(parents=True)
    (env / "u.data.gz").write_bytes(b"")
    monkeypatch.setenv("TWOTOWER_DATA_DIR", str(tmp_path / "env"))
    assert find_movielens("ml-100k", tmp_path / "explicit") == explicit
    assert find_movielens("ml-100k", explicit) == explicit  # data_dir may be the folder itself
    assert find_movielens("ml-100k") == env
    monkeypatch.delenv("TWOTOWER_DATA_DIR")
    if (DATA / "ml-1m").is_dir():
        assert find_movielens("ml-1m").resolve() == (DATA / "ml-1m").resolve()
    with pytest.raises(FileNotFoundError, match="ml-25m not found.*downloads disabled"):
        find_movielens("ml-25m", tmp_path, allow_download=False)
    with pytest.raises(FileNotFoundError, match="without a sha256"):
        find_movielens("ml-25m", tmp_path)  # no known checksum: refuses to download
    with pytest.raises(ValueError, match="unknown MovieLens variant"):
        find_movielens("ml-3m")


def make_zip(path: Path, inner: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{inner}/ratings.csv", "userId,movieId,rating,timestamp\n1,5,4.0,10\n")
        zf.writestr(f"{inner}/movies.csv", "movieId,title,genres\n5,Five (2001),Drama\n")
    return path


def test_download_via_find_and_zip_extraction(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "remote.zip", "ml-20m")
    (tmp_path / "ml-20m.zip").write_bytes(archive.read_bytes())
    monkeypatch.setattr(locate, "GROUPLENS_URL", (tmp_path / "{variant}.zip").as_uri()
                        .replace("%7B", "{").replace("%7D", "}"))
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        find_movielens("ml-20m", tmp_path / "nowhere", sha256="1" * 64)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    folder = find_movielens("ml-20m", tmp_path / "nowhere", sha256=digest)
    assert folder == tmp_path / "cache" / "movielens" / "extracted" / "ml-20m"
    assert (folder / "ratings.csv").is_file()
    assert find_movielens("ml-20m", tmp_path / "nowhere", allow_download=False) == folder


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ml_latest_small_zip_from_shared_data(tmp_path, ray_cluster):
    if not (DATA / "ml-latest-small" / "ml-latest-small.zip").is_file():
        pytest.fail("ml-latest-small.zip not available" + " (set TWOTOWER_DATA_DIR or place MovieLens under ../shared/data)")
    folder = find_movielens("ml-latest-small", DATA)
    assert folder.is_relative_to(tmp_path / "cache")  # extracted into the cache, not the repo
    stats = prepare_movielens(tmp_path / "out", "ml-latest-small", src=folder, history_length=10)
    assert sum(stats["rows"].values()) == 100_836
    assert (stats["users"], stats["items"]) == (610, 9742)
    assert stats["rows"]["test"] == 610
