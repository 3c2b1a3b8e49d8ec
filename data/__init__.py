"""twotower.data: raw tables -> prepared dataset directories (layout in :mod:`twotower.model.schema`).

Pure functions and readers, no Ray (the Ray Data job that runs them is :mod:`twotower.distributed.prepare`):

* :mod:`twotower.data.spec`: the dataset spec (YAML) a team writes for its own tables;
* :mod:`twotower.data.raw`, :mod:`twotower.data.normalize`: reading raw parquet / CSV and checking values;
* :mod:`twotower.data.events`, :mod:`twotower.data.sequences`: per-partition grouping, encoding, sequence
  rows, and the examples cut from them; :mod:`twotower.data.entity_tables`: users / items tables;
* sources: :mod:`twotower.data.movielens` (+ :mod:`~twotower.data.movielens_tables`),
  :mod:`twotower.data.synthetic`; :func:`twotower.data.locate.find_movielens`;
* :func:`twotower.data.tables.load_feature_tables`; :class:`twotower.data.errors.DataFormatError`.
"""
