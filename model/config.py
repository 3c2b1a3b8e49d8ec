"""Typed model configuration: architecture and loss hyperparameters (pydantic, YAML-friendly)."""
from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ContextMode(str, Enum):
    """Where interaction context (time of day, day of week, ...) enters the model.

    - ``user_tower``: context is concatenated into the user tower input;
      score = dot(user_tower(u, ctx), item_tower(i)).
    - ``trilinear``: score = dot(user_rep * ctx_emb, item_rep) with ctx_emb a projection of the context
      (Hadamard modulation); user_rep can be cached per user.
    - ``scoring_layer``: score = MLP([user_rep, item_rep, ctx_rep]); not a dot product, so retrieval takes
      dot-product candidates and the head re-ranks them (a purely linear head over the concatenation would
      add a per-item constant and rank items identically for every user and context).
    """

    USER_TOWER = "user_tower"
    TRILINEAR = "trilinear"
    SCORING_LAYER = "scoring_layer"


class ModelConfig(BaseModel):
    """Architecture and loss hyperparameters of a two-tower model.

    Loss terms (see ``twotower.model.loss``): in-batch sampled softmax with ``temperature``, logQ
    correction (Yi et al., RecSys 2019) when ``logq_correction``, masking of accidental hits, and
    ``num_negatives`` extra uniformly sampled catalogue items per batch (mixed negative sampling,
    Yang et al., WWW 2020). ``loss="full_softmax"`` scores every query against the whole catalogue
    (exact softmax; the sampling keys do not apply). ``loss="bce"`` is the pointwise baseline with
    ``num_negatives`` uniform negatives per positive.

    ID tables (``twotower.model.embeddings``): ``sparse_id_embeddings`` makes the user and item ID
    embeddings produce sparse gradients (optimised by ``twotower.model.optim.build_optimizer``);
    ``user_id_buckets`` / ``item_id_buckets`` replace one row per id by a hashed table of that many rows.

    History encoders (``history_pooling``): ``mean`` / ``attention`` pool the last N items;
    ``transformer`` is the causal self-attention encoder of ``twotower.model.sequence`` (``sequence_*``
    keys, ``max_sequence_length``, ``time_gap_buckets``). ``in_batch_candidates`` is a loss key of
    sequence training (``examples: sequence``): the shared in-batch candidates per step.

    Raises (pydantic ``ValidationError``): ``sequence_heads`` does not divide ``item_embedding_dim``
    (the encoder's width) when ``history_pooling`` is ``transformer``.
    """

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    user_embedding_dim: int = Field(64, ge=1)
    item_embedding_dim: int = Field(64, ge=1)
    feature_embedding_dim: int = Field(16, ge=1, description="size of each categorical side-feature embedding")
    final_embedding_dim: int = Field(64, ge=1)
    hidden_dims: list[int] = Field(default_factory=lambda: [256])
    activation: Literal["relu", "gelu"] = "relu"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    layer_norm: bool = True
    l2_normalize: bool = True
    history_pooling: Literal["mean", "attention", "none", "transformer"] = "mean"
    max_sequence_length: int = Field(
        50, ge=1, description="transformer: most recent items the encoder reads (history length of its "
                              "per-event examples, window length of sequence training)")
    sequence_layers: int = Field(2, ge=1, description="transformer: pre-norm causal self-attention blocks")
    sequence_heads: int = Field(1, ge=1, description="transformer: attention heads (divide item_embedding_dim)")
    sequence_dropout: float = Field(0.2, ge=0.0, lt=1.0, description="transformer: dropout of inputs and blocks")
    sequence_input: Literal["id", "item_tower"] = Field(
        "id", description="transformer inputs: the item ID embeddings shared with the item tower, or the "
                          "item tower's representations (projected to item_embedding_dim)")
    time_gap_buckets: int = Field(
        0, ge=0, description="transformer: embed log2 buckets of the gap to the previous item (0 = off)")
    context_mode: ContextMode = ContextMode.USER_TOWER
    scoring_hidden_dims: list[int] = Field(default_factory=lambda: [64])
    rerank_depth: int = Field(100, ge=1, description="scoring_layer: dot-product candidates re-ranked by the head")
    sparse_id_embeddings: bool = Field(
        True, description="user/item ID tables give sparse gradients: DDP all-reduces and the optimizer "
                          "updates only the rows of the batch (see docs/large_ids.md)")
    user_id_buckets: int | None = Field(
        None, ge=2, description="hash user ids into this many rows (double hashing); None = one row per user")
    item_id_buckets: int | None = Field(
        None, ge=2, description="hash item ids into this many rows (double hashing); None = one row per item")

    loss: Literal["softmax", "full_softmax", "bce"] = Field(
        "softmax", description="softmax: in-batch sampled softmax; full_softmax: exact softmax over every item "
                               "of the catalogue each step (small catalogues); bce: pointwise baseline")
    temperature: float = Field(0.05, gt=0.0)
    logq_correction: bool = True
    mask_accidental_hits: bool = True
    num_negatives: int = Field(0, ge=0, description="softmax: extra uniform negatives per batch; bce: per positive")
    in_batch_candidates: int | None = Field(
        None, ge=1, description="sequence training: shared negatives per step sampled (with replacement) from "
                                "the batch's positives of every position; None = all of them")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.history_pooling == "transformer" and self.item_embedding_dim % self.sequence_heads:
            raise ValueError(f"sequence_heads {self.sequence_heads} must divide item_embedding_dim "
                             f"{self.item_embedding_dim} (the encoder's width)")
        return self
