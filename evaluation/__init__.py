"""In-process (no Ray) offline evaluation of a checkpoint: full-ranking Recall/HR/NDCG@k and sampled
HR/NDCG@10 of the model and of the popularity baseline, exactly and through an index
(:func:`~twotower.evaluation.offline.evaluate`). Imports ``data``, ``index`` and ``model``; used by
``jobs`` and ``bench``. Validation during training uses the same metrics (``model.metrics``)."""
from twotower.evaluation.offline import evaluate, iter_split_batches

__all__ = ["evaluate", "iter_split_batches"]
