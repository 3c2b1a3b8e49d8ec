"""The applications ``bench/serve_load.py`` measures on one Ray Serve instance: the no-op floor and the
twotower variants (context mode x index factory x shard count x serving: sharded deployments or colocated).
Not part of the installed package (benchmarks only)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Variant:
    """One twotower application: ``mode`` (context mode), ``factory`` (FAISS factory string), ``shards``,
    ``serving``: ``sharded`` (Ingress -> QueryEncoder -> SearcherK) or ``colocated`` (all in the Ingress)."""

    mode: str
    factory: str
    shards: int
    serving: str

    @property
    def name(self) -> str:
        return f"{self.mode}/{self.factory}/{self.shards}sh/{self.serving}"

    @property
    def route(self) -> str:
        return "/" + "-".join([self.mode, self.factory.replace(",", "_"), str(self.shards), self.serving]).lower()


def variants(modes: str, factories: str, shard_counts: str, servings: str) -> list[Variant]:
    """Every combination of the comma lists ``modes``, ``shard_counts``, ``servings`` and the ``;`` list
    ``factories`` (factory strings hold commas: ``Flat;IVF64,Flat``)."""
    return [Variant(m, f, int(s), v) for m in modes.split(",") for f in factories.split(";")
            for s in shard_counts.split(",") for v in servings.split(",")]


def build_index(out: Path, ckpt: Path, dataset: Path, factory: str, shards: int) -> Path:
    """An index of every catalogue item built from ``ckpt`` (nprobe: the factory's default)."""
    import pyarrow.parquet as pq

    from twotower.index import build_local_index, checkpoint_record
    from twotower.model.checkpoint import load_checkpoint, read_checkpoint

    if (out / "manifest.json").exists():
        return out
    info = read_checkpoint(ckpt)
    emb = load_checkpoint(ckpt, info=info).model.all_item_embeddings().numpy()
    ids = pq.read_table(dataset / "items.parquet", columns=["item_id"])["item_id"].to_pylist()
    build_local_index(out, emb[1:], np.arange(1, len(emb)), ids[1:], factory=factory, num_shards=shards,
                      checkpoint=checkpoint_record(info), overwrite=True)
    return out


def deploy_floor(canned: dict, num_cpus: float) -> None:
    """The floor at ``/floor``: a Serve deployment with a FastAPI ingress whose ``POST /v1/recommend`` parses
    the JSON body and returns ``canned`` (a real answer, so the same bytes travel both ways)."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @api.post("/v1/recommend")
    async def recommend(body: dict) -> dict:
        return canned

    @serve.deployment(name="Floor", max_ongoing_requests=64, ray_actor_options={"num_cpus": num_cpus},
                      logging_config={"enable_access_log": False})
    @serve.ingress(api)
    class Floor:
        pass

    serve.run(Floor.bind(), name="floor", route_prefix="/floor")


def deploy_variant(v: Variant, ckpt: Path, dataset: Path, index: Path, num_cpus: float) -> None:
    """``v`` at ``v.route`` (``serve.run`` of :func:`twotower.serve.app.build_app`, access log off)."""
    from ray import serve

    from twotower.serve.app import build_app

    serve.run(build_app({"checkpoint": str(ckpt), "dataset": str(dataset), "index": str(index), "num_cpus": num_cpus,
                         "access_log": False, "colocate": v.serving == "colocated"}),
              name="bench", route_prefix=v.route)
