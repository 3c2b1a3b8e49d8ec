"""MovieLens readers: real files and every bad-input case of DataFormatError."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from twotower.data.errors import DataFormatError
from twotower.data.movielens import read_items, read_movielens, read_ratings, read_users

DATA = Path(os.environ.get("TWOTOWER_DATA_DIR",
                           Path(__file__).resolve().parents[2].parent / "shared" / "data"))


def need(variant: str) -> Path:
    path = DATA / variant
    if not path.is_dir():
        pytest.fail(f"real data {path} not available" + " (set TWOTOWER_DATA_DIR or place MovieLens under ../shared/data)")
    return path


def test_ml100k_real_files():
    d = read_movielens(need("ml-100k"), "ml-100k")
    r = d.ratings
    assert len(r) == 100_000
    assert r["user_id"].nunique() == 943 and r["item_id"].nunique() == 1682
    assert [str(t) for t in r.dtypes] == ["int64", "int64", "float32", "int64"]
    assert r.iloc[0].tolist() == [196, 242, 3.0, 881250949]
    assert (r["timestamp"].min(), r["timestamp"].max()) == (874724710, 893286638)
    assert len(d.users) == 943 and len(d.items) == 1682
    u1 = d.users.set_index("user_id").loc[1]
    assert (u1["gender"], u1["age_bucket"], u1["occupation"], u1["zip_prefix"]) == \
        ("M", 18, "technician", "857")  # age 24 -> bucket 18
    items = d.items.set_index("item_id")
    assert items.loc[1, "year"] == 1995
    assert items.loc[1, "genres"] == ["Animation", "Children's", "Comedy"]
    assert items.loc[267, "year"] == 0  # "unknown" item, no date or year
    assert any("\u00e9" in t for t in items["title"])  # latin-1 decoded


def test_ml1m_real_files_parse_fast():
    import time

    t0 = time.time()
    d = read_movielens(need("ml-1m"), "ml-1m")
    elapsed = time.time() - t0
    r = d.ratings
    assert len(r) == 1_000_209
    assert r["user_id"].nunique() == 6040 and r["item_id"].nunique() == 3706
    assert r.iloc[0].tolist() == [1, 1193, 5.0, 978300760]
    assert r.iloc[-1].tolist() == [6040, 1097, 4.0, 956715569]
    assert len(d.users) == 6040 and (d.users["gender"] == "M").sum() == 4331
    assert set(d.users["age_bucket"]) == {1, 18, 25, 35, 45, 50, 56}
    assert len(d.items) == 3883
    assert elapsed < 20, f"ML-1M took {elapsed:.1f}s to parse"


def write(path: Path, text: str, gz: bool = False) -> Path:
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(text.encode("latin-1"))
    else:
        path.write_bytes(text.encode("latin-1"))
    return path


GOOD = "1\t10\t3\t881250949\n2\t20\t4\t881250950\n"


@pytest.mark.parametrize("text,sep,line,needle", [
    (GOOD + "abc\t20\t4\t881250951\n", "\t", 3, "user id 'abc' is not an integer"),
    ("1\t10\t3\t881250949\n1\tx7\t3\t881250949\n", "\t", 2, "item id 'x7' is not an integer"),
    (GOOD + "3\t30\t5\t-5\n", "\t", 3, "timestamp '-5' is negative"),
    (GOOD + "3,30,5,881250952\n", "\t", 3, "expected 4 fields"),
    ("1,10,3,881250949\n", "\t", 1, "wrong separator"),
    (GOOD + "\n4\t40\tfive\t881250952\n", "\t", 4, "rating 'five' is not a number"),
    ("1::10::3::5\n2::20::3::1.5\n", "::", 2, "timestamp '1.5' is not an integer"),
    ("1::10::3::5\n2::20::3\n", "::", 2, "expected 4 fields"),
])
def test_bad_ratings_name_file_line_value(tmp_path, text, sep, line, needle):
    path = write(tmp_path / "u.data", text)
    with pytest.raises(DataFormatError) as e:
        read_ratings(path, sep)
    msg = str(e.value)
    assert f"u.data line {line}:" in msg and needle in msg
    assert e.value.line == line


def test_empty_missing_and_gzipped(tmp_path):
    with pytest.raises(DataFormatError, match=r"u\.data: file is empty"):
        read_ratings(write(tmp_path / "u.data", ""), "\t")
    with pytest.raises(DataFormatError, match=r"u\.data: file is empty"):
        read_ratings(write(tmp_path / "u.data", "\n\n"), "\t")
    with pytest.raises(DataFormatError, match="not found"):
        read_ratings(tmp_path / "nope.data", "\t")
    r = read_ratings(write(tmp_path / "r.dat.gz", "1::10::3::5\n2::20::4::6", gz=True), "::")
    assert r["item_id"].tolist() == [10, 20] and r["timestamp"].tolist() == [5, 6]
    # missing users file in a variant folder names that file
    (tmp_path / "ml").mkdir()
    write(tmp_path / "ml" / "u.data", GOOD)
    with pytest.raises(DataFormatError, match=r"u\.user: file not found"):
        read_movielens(tmp_path / "ml", "ml-100k")


def test_bad_users_and_items(tmp_path):
    p = write(tmp_path / "u.user", "1|24|M|technician|85711\n2|old|F|other|94043\n")
    with pytest.raises(DataFormatError, match=r"u\.user line 2: age 'old' is not an integer"):
        read_users(p, "ml-100k")
    p = write(tmp_path / "users.dat", "1::F::1::10::48067\n2::M::33::16::70072\n")
    with pytest.raises(DataFormatError, match=r"users\.dat line 2: age code '33'"):
        read_users(p, "ml-1m")
    p = write(tmp_path / "movies.dat", "1::Toy Story (1995)::Comedy\n2|Jumanji (1995)|Fantasy\n")
    with pytest.raises(DataFormatError, match=r"movies\.dat line 2: .*wrong separator"):
        read_items(p, "ml-1m")


def test_csv_layout(tmp_path):
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.5,100\n1,20,0.5,50\n")
    write(tmp_path / "movies.csv", 'movieId,title,genres\n10,"American President, The (1995)",'
                                   'Comedy|Drama\n20,Untitled,(no genres listed)\n')
    d = read_movielens(tmp_path, "ml-20m")
    assert d.users is None
    assert d.ratings["rating"].tolist() == [4.5, 0.5]
    items = d.items.set_index("item_id")
    assert items.loc[10, "title"] == "American President, The (1995)"
    assert items.loc[10, "year"] == 1995 and items.loc[10, "genres"] == ["Comedy", "Drama"]
    assert items.loc[20, "genres"] == [] and items.loc[20, "year"] == 0
    assert np.array_equal(d.ratings["user_id"].to_numpy(), [1, 1])


def test_block_reading_keeps_line_numbers(tmp_path):
    lines = [f"{u},{u * 10},3.5,{1000 + u}" for u in range(1, 40)]
    lines[30] = "31,310,3.5,-7"  # line 32 of the file (line 1 is the header)
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n" + "\n".join(lines))
    with pytest.raises(DataFormatError, match=r"ratings\.csv line 32: timestamp '-7' is negative"):
        read_ratings(path, ",", header=True, block_bytes=50)
    lines[30] = "31,310,3.5,1031"
    path.write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines))
    r = read_ratings(path, ",", header=True, block_bytes=50)
    assert r["user_id"].tolist() == list(range(1, 40)) and r["timestamp"].iloc[-1] == 1039
