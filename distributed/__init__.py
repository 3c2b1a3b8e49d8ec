"""twotower.distributed: the only package that uses Ray Train / Ray Data internals.

Training, in the order one ``twotower train`` runs it:

* :mod:`.config` ``TrainConfig`` (YAML + ``key=value`` overrides, validated once);
* :mod:`.run` ``resolve_run`` -> the frozen ``ResolvedRun`` (schema, checked split files, steps per
  epoch, run directory, resume checkpoint), resolved once on the driver;
* :mod:`.trainer` ``TwoTowerTrainer.fit``: Ray start-up (:mod:`.local_ray`), the ``TorchTrainer``
  under the stall watchdog (:mod:`.watchdog`), then :mod:`.artifacts` (best checkpoint, metrics.csv,
  curves, summary.json);
* :mod:`.train_loop` ``train_loop_per_worker``: set-up, the epoch loop and its step, validation,
  report; :mod:`.train_state` (early stopping, resumable state); :mod:`.data` (Ray Data pipeline and
  shards); :mod:`.collective` (all-reduce / all-gather helpers).

Indexing: :mod:`.index_job` / :mod:`.index_embed` (embed the catalogue with a Ray Data actor pool,
build FAISS shards as Ray tasks). In-process evaluation lives in :mod:`twotower.evaluation`.
"""
