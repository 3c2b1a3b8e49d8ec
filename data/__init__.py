"""twotower.data: raw data -> prepared dataset directories (layout in :mod:`twotower.model.schema`).

Public API (import from the submodules):

* :func:`twotower.data.prepare.prepare_movielens` / :func:`~twotower.data.prepare.write_movielens`
* :func:`twotower.data.synthetic.prepare_synthetic`
* :func:`twotower.data.tables.load_feature_tables`
* :func:`twotower.data.locate.find_movielens`, :func:`~twotower.data.locate.download`
* :func:`twotower.data.movielens.read_movielens` and the per-file readers
* :class:`twotower.data.errors.DataFormatError`
"""
