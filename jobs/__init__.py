"""twotower.jobs: the ``twotower`` CLI (:mod:`.cli`) and one module per job (``prepare``, ``train``,
``index``, ``evaluate``, ``serve``), each a thin parser over a typed config and the package that does
the work; every job also runs as ``python -m twotower.jobs.<job>`` (e.g. under ``ray job submit``)."""
