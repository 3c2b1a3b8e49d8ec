"""twotower.model: the model itself, pure PyTorch/NumPy (no Ray).

* :mod:`.schema` ``DatasetSchema`` (what ``schema.json`` says; the prepared-dataset layout);
* :mod:`.config` ``ModelConfig``; :mod:`.twotower` ``TwoTowerModel`` over :mod:`.towers`,
  :mod:`.features`, :mod:`.embeddings`;
* :mod:`.loss` every term of the loss (``compute_loss``: in-batch sampled softmax, temperature, logQ
  correction, mixed negatives, gathered negatives; the BCE baseline);
* :mod:`.batch` the one batch conversion (``to_numpy_batch`` / ``as_tensors``) and ``pad_lists``;
* :mod:`.metrics` Recall/HR/NDCG@k, sampled metrics, ``eval_batch_size``;
* :mod:`.optim` dense + sparse optimizers (``build_optimizer``);
* :mod:`.checkpoint` the one checkpoint format: ``save_checkpoint`` / ``read_checkpoint`` /
  ``load_checkpoint`` and ``check_dataset``, the one checkpoint-vs-dataset compatibility check.

File I/O goes through :mod:`twotower.storage` (local paths or URIs).
"""
