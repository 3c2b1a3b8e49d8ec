"""Reading the splits from the sequence files: footer counts, the footer + column check, the in-process
example reader (no Ray)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.data.errors import DataFormatError
from twotower.data.sequences import cut_examples, write_sequence_file
from twotower.data.splits import (check_splits, cut_chunks, iter_split_examples, sequence_files,
                                  sequence_required_columns, split_num_rows)
from twotower.model.schema import DatasetSchema


pytestmark = pytest.mark.timeout(300)        # the dataset fixtures run the prepare job on Ray


def _all_rows(ds) -> pa.Table:
    """Every sequence row of a dataset, files in name order."""
    return pa.concat_tables(pq.read_table(f) for f in sequence_files(ds))


@pytest.fixture
def three_files(synthetic_dataset, tmp_path):
    """A copy of the synthetic dataset with its sequences stored as three files."""
    out = shutil.copytree(synthetic_dataset, tmp_path / "ds")
    folder = out / "sequences"
    rows = _all_rows(out)
    for f in folder.iterdir():
        f.unlink()
    third = rows.num_rows // 3 + 1
    for k in range(3):
        write_sequence_file(rows.slice(k * third, third), str(folder / f"part-{k:05d}.parquet"), row_group_rows=100)
    return out


def test_rows_per_split_from_the_footers_equal_the_examples_cut(synthetic_dataset, ml100k_dataset):
    for ds, expected in ((synthetic_dataset, {"train": 56_000, "valid": 2000, "test": 2000}),
                         (ml100k_dataset, {"train": 98_114, "valid": 943, "test": 943})):
        schema = DatasetSchema.load(ds)
        rows = _all_rows(ds)
        cut = {s: len(cut_examples(rows, c, schema)["item_idx"]) for c, s in enumerate(("train", "valid", "test"))}
        assert cut == expected == {s: split_num_rows(ds, s) for s in expected}
        files, counts, skipped = check_splits(ds, schema, ("train", "valid", "test"))
        assert counts == expected and skipped == [] and files["train"] == files["test"] == sequence_files(ds)


def test_missing_footer_metadata_or_column_is_named(three_files):
    schema = DatasetSchema.load(three_files)
    bad = three_files / "sequences" / "part-00001.parquet"
    table = pq.read_table(bad)
    pq.write_table(table.replace_schema_metadata(None), bad)         # columns fine, no twotower.events
    with pytest.raises(DataFormatError, match="no 'twotower.events' footer metadata") as info:
        check_splits(three_files, schema)
    assert info.value.path == str(bad) and "skip_bad_files" in str(info.value)
    with pytest.raises(DataFormatError, match="no 'twotower.events'"):
        split_num_rows(three_files, "valid")
    pq.write_table(table.replace_schema_metadata({b"twotower.events": b"{not json"}), bad)
    with pytest.raises(DataFormatError, match="unreadable 'twotower.events' footer metadata"):
        check_splits(three_files, schema)
    write_sequence_file(table.drop_columns(["seen_before"]), str(bad))
    with pytest.raises(DataFormatError, match=r"missing column 'seen_before' \(has user_idx, start"):
        check_splits(three_files, schema)
    i = table.schema.get_field_index("split")
    write_sequence_file(table.set_column(i, "split", table["split"].cast(pa.list_(pa.float32()))), str(bad))
    with pytest.raises(DataFormatError, match="column 'split' has type list<element: float>, expected integer list"):
        check_splits(three_files, schema)
    files, counts, skipped = check_splits(three_files, schema, skip_bad_files=True)
    good = [f for f in sequence_files(three_files) if f != str(bad)]
    assert files == {"train": good, "valid": good} and [b.path for b in skipped] == [str(bad)]
    assert counts["valid"] == sum(len(cut_examples(pq.read_table(f), 1, schema)["item_idx"]) for f in good) > 0
    for f in good:
        (three_files / "sequences" / f.rsplit("/", 1)[1]).write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="no usable sequence file left"):
        check_splits(three_files, schema, skip_bad_files=True)


def test_required_columns_follow_the_schema():
    from twotower.data.features import CONTEXT_FEATURES
    from twotower.model.schema import Feature
    schema = DatasetSchema(num_users=3, num_items=3, history_length=2, weighted=True,
                           context_features=CONTEXT_FEATURES + (Feature("price", "numeric"),
                                                                Feature("tags", "multi_hot", 4, max_length=2)))
    cols = sequence_required_columns(schema)
    assert (cols["user_idx"], cols["item_idx"], cols["weight"], cols["price"], cols["tags"]) == \
        ("integer", "integer_list", "number_list", "number_list", "integer_list_list")
    assert "hour_sin" not in cols                                    # derived from the timestamp, never stored


def test_cut_chunks_and_batches_keep_every_example_in_order(three_files):
    schema = DatasetSchema.load(three_files)
    rows = _all_rows(three_files)
    whole = cut_examples(rows, 0, schema)
    parts = list(cut_chunks(rows, 0, schema, max_entries=1000))
    assert len(parts) > 50 and all(len(p["item_idx"]) <= 1000 for p in parts)
    for key in whole:
        assert np.array_equal(np.concatenate([p[key] for p in parts]), whole[key]), key
    batches = list(iter_split_examples(three_files, "train", schema, batch_size=4096))
    assert [len(b["item_idx"]) for b in batches] == [4096] * 13 + [56_000 - 13 * 4096]
    for key in whole:
        assert np.array_equal(np.concatenate([b[key] for b in batches]), whole[key]), key
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        next(iter_split_examples(three_files, "dev", schema))
    with pytest.raises(FileNotFoundError, match="no parquet files"):
        split_num_rows(three_files / "nowhere", "train")


def test_the_example_cutting_code_does_not_load_torch():
    """Ray Data tasks run cut_chunks; without torch in their imports they start faster and hold less memory."""
    code = "import sys, twotower.data.splits; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
