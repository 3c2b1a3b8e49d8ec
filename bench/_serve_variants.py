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


def stage_times(rec, bodies: list[dict]) -> dict[str, float]:
    """Median milliseconds per request of the pipeline's stages in this process (what a colocated Ingress
    does after FastAPI has parsed the body): ``validate`` (request model), ``plan`` (context, user
    state, exclusions), ``encode`` (query tower, one query), ``search`` (every shard + exact merge),
    ``shape`` (response model with titles) and ``json`` (serialising it)."""
    import time

    from twotower.serve.recommender import _items, plan_recommend
    from twotower.serve.schema import RecommendRequest, RecommendResponse

    out: dict[str, list[float]] = {k: [] for k in ("validate", "plan", "encode", "search", "shape", "json")}
    for body in bodies:
        t = [time.perf_counter()]
        req = RecommendRequest.model_validate(body)
        t.append(time.perf_counter())
        plan = plan_recommend(req, rec.state)
        t.append(time.perf_counter())
        q = rec.encoder.encode([plan.query])
        t.append(time.perf_counter())
        scores, items = rec.index.search(q, plan.k, exclude=[plan.exclude])
        t.append(time.perf_counter())
        resp = RecommendResponse(user_id=plan.user_id, items=_items(rec.state, scores[0], items[0]), path=plan.path,
                                 model_version=rec.state.model_version, context=plan.context)
        t.append(time.perf_counter())
        resp.model_dump_json()
        t.append(time.perf_counter())
        for key, a, b in zip(out, t, t[1:]):
            out[key].append((b - a) * 1000.0)
    return {k: float(np.median(v)) for k, v in out.items()}


def report_markdown(doc: dict, command: str) -> str:
    """The docs/benchmarks.md table of a ``serve_load.py --out`` JSON: every HTTP row beside the floor measured
    just before it (p50 difference at each concurrency, requests/s as a share of the floor's), then the
    in-process stage times."""
    rows, floor, lines = doc["results"], {}, []
    lines += ["| app | c | requests | errors | p50 ms | p95 ms | p99 ms | req/s | p50 - floor p50 | req/s / floor's | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "concurrency" not in r or r["path"].startswith(("search", "pipeline")):
            continue
        c = r["concurrency"]
        if r["path"].startswith("floor"):
            floor[c] = r
        f = floor.get(c)
        vs = ("", "") if r["path"].startswith("floor") or f is None else (
            f"{r['p50_ms'] - f['p50_ms']:+.1f} ms", f"{r['rps'] / f['rps']:.2f}")
        lines.append(f"| {r['path']} | {c} | {r['requests']} | {r['errors']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['rps']:.0f} | {vs[0]} | {vs[1]} | {r['load1']} |")
    stages = [r for r in rows if r["path"].startswith("stages ")]
    if stages:
        keys = [k for k in stages[0] if k != "path"]
        lines += ["", "In-process stage times (median ms per request, one query at a time):", "",
                  "| variant | " + " | ".join(keys) + " | total |", "|---|" + "---|" * (len(keys) + 1)]
        lines += [f"| {r['path'][7:]} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + f" | {sum(r[k] for k in keys):.2f} |"
                  for r in stages]
    return "\n".join([f"Command: `{command}`", "", f"Machine: {doc['machine']}", "", *lines])
