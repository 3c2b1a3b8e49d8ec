"""Serving every feature kind without Ray: context fields, cold-start user features, the request models and
their published schema, the query batch, GET /v1/model (the planted every-kind dataset of ``feature_data``)."""
from __future__ import annotations

import dataclasses
import math

import jsonschema
import numpy as np
import pytest
import torch
from pydantic import ValidationError
from serve_helpers import make_feature_artifacts

import feature_data as fd
from twotower.data.features import context_features, hash_tokens
from twotower.model.batch import feature_column
from twotower.model.checkpoint import read_checkpoint
from twotower.model.schema import Feature
from twotower.serve import Recommender
from twotower.serve.context import context_batch, resolve_context
from twotower.serve.contract import recommend_examples, request_models
from twotower.serve.loading import load_serving_state
from twotower.serve.query import QueryInput
from twotower.serve.recommender import plan_recommend
from twotower.serve.routes import build_api, model_info
from twotower.serve.schema import RequestError

TS = 880_000_000
STORED = {"c_device": "ios", "c_temp": 20, "c_dist": 5.0, "c_tags": ["evening", 1]}
COLD = {"u_cat": "b", "u_num": 130, "u_bucket": 18, "u_tags": ["t5", "nope", "t1"], "u_bio": "Hello alpha",
        "u_vec": [1, 2, 3, 4.5]}


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """Checkpoint + index + dataset per context mode (60 planted training steps each, one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {m: make_feature_artifacts(tmp_path_factory.mktemp(f"features-{m}"), m)
           for m in ("user_tower", "trilinear", "scoring_layer")}
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def state(arts):
    return load_serving_state(read_checkpoint(arts["user_tower"].checkpoint))


@pytest.fixture(scope="module")
def recs(arts):
    return {m: Recommender.load(a.checkpoint, a.index) for m, a in arts.items()}


def error(call, *args) -> RequestError:
    with pytest.raises(RequestError) as e:
        call(*args)
    return e.value


def test_context_of_every_kind_stored_and_derived(state):
    schema, vocabs = state.schema, state.context_vocabs
    got = resolve_context({"timestamp": TS, **STORED}, schema, vocabs)
    derived = {k: v[0].item() for k, v in context_features(np.array([TS])).items()}
    assert got == {"c_device": 1, "c_temp": 20.0, "c_dist": 5.0, "c_tags": [1, 2], **derived}
    named = resolve_context({**STORED, **derived, "day_of_week": "Sunday", "c_tags": []}, schema, vocabs)
    assert named["day_of_week"] == 7 and named["c_tags"] == []
    twice = resolve_context({"timestamp": TS, **STORED, "c_tags": ["evening", 2]}, schema, vocabs)
    assert twice["c_tags"] == [2]                                              # duplicates count once
    batch = context_batch([got, named], schema)
    assert batch["c_tags"].tolist() == [[1, 2], [0, 0]] and batch["c_tags"].dtype == np.int64
    assert batch["c_dist"].dtype == np.float32 and batch["c_device"].dtype == np.int64


@pytest.mark.parametrize("context, field, message", [
    ({"timestamp": TS}, "context.c_device", "every stored context field must be given"),
    ({}, "context.c_device", "every stored context field must be given"),
    (STORED, "context.hour_sin", "give every context field or a timestamp"),
    ({"timestamp": TS, **STORED, "c_tags": ["noon"]}, "context.c_tags", "unknown value 'noon'; known: ['morning'"),
    ({"timestamp": TS, **STORED, "c_tags": [1, 2, 3]}, "context.c_tags", "at most 2 entries, got 3"),
    ({"timestamp": TS, **STORED, "c_tags": [4]}, "context.c_tags", "index must be in 1..3, got 4"),
    ({"timestamp": TS, **STORED, "c_tags": "morning"}, "context.c_tags", "must be a list"),
    ({"timestamp": TS, **STORED, "c_dist": "far"}, "context.c_dist", "must be a finite number"),
    ({"timestamp": TS, **STORED, "c_temp": 2e6}, "context.c_temp", "must be in -1e+06..1e+06"),
    ({"timestamp": TS, **STORED, "c_device": "windows"}, "context.c_device", "unknown value 'windows'"),
])
def test_context_errors_name_the_field(state, context, field, message):
    e = error(resolve_context, context, state.schema, state.context_vocabs)
    assert e.field == field and message in e.message, e


def test_only_timestamp_sourced_features_are_derived(state):
    stored_only = dataclasses.replace(state.schema, context_features=state.schema.stored_context)
    for extra in ({"timestamp": TS}, {"hour_sin": 0.5}):
        e = error(resolve_context, {**STORED, **extra}, stored_only, state.context_vocabs)
        assert e.field == f"context.{next(iter(extra))}" and "unknown context field" in e.message
    assert resolve_context(STORED, stored_only, state.context_vocabs)["c_tags"] == [1, 2]
    mixed = dataclasses.replace(state.schema, context_features=(  # a STORED hour_sin is never derived
        Feature("hour_sin", "numeric"), Feature("day_of_week", "categorical", 8, source="timestamp")))
    e = error(resolve_context, {"timestamp": TS}, mixed)
    assert e.field == "context.hour_sin" and "stored" in e.message
    assert resolve_context({"timestamp": TS, "hour_sin": 0.25}, mixed) == {"hour_sin": 0.25, "day_of_week": 4}


def test_cold_start_user_features_of_every_kind(state):
    got = state.users.encode_user_features(COLD)
    assert got == {"u_cat": 2, "u_num": 130.0, "u_bucket": 18.0, "u_tags": [1, 5],
                   "u_bio": hash_tokens("Hello alpha", 64, 8), "u_vec": [1.0, 2.0, 3.0, 4.5]}
    assert got["u_bio"] == [hash_tokens("hello", 64, 8)[0], hash_tokens("alpha", 64, 8)[0]]


@pytest.mark.parametrize("name, value, message", [
    ("u_vec", [1, 2, 3], "exactly 4 numbers (the vector's dim), got 3 values"),
    ("u_vec", [1, 2, 3, True], "entry 3 must be a number"), ("u_vec", "1,2,3,4", "exactly 4 numbers"),
    ("u_vec", [1, 2, 3, 1e7], "must be in"), ("u_num", "tall", "must be a finite number"),
    ("u_num", -2e6, "must be in"), ("u_bucket", [18], "must be a finite number"),
    ("u_tags", "t1", "must be a list"), ("u_tags", ["t1", "t2", "t3", "t4"], "at most 3 entries"),
    ("u_tags", [" "], "non-empty string or an integer"), ("u_bio", 42, "must be a text"),
    ("u_bio", "x" * 10_001, "at most 10000 characters"), ("u_cat", [1], "non-empty string or an integer"),
    ("u_shoe", 42, "unknown user feature"),
])
def test_bad_user_feature_values_name_the_field(state, name, value, message):
    e = error(state.users.encode_user_features, {name: value})
    assert e.field == f"user_features.{name}" and message in e.message, e


def test_published_schema_declares_every_kind_and_agrees_with_the_models(state):
    doc = build_api(state, backend=None, num_shards=1).openapi()
    props = {k: v for k, v in doc["components"]["schemas"].items() if k in ("UserFeatures", "RecommendContext")}
    users, ctx = props["UserFeatures"]["properties"], props["RecommendContext"]
    assert (users["u_vec"]["minItems"], users["u_vec"]["maxItems"]) == (4, 4)
    assert users["u_vec"]["items"] == {"type": "number", "minimum": -1e6, "maximum": 1e6}
    assert users["u_tags"]["maxItems"] == 3 and users["u_bio"]["type"] == "string"
    assert users["u_num"]["anyOf"][0]["maximum"] == 1e6 and set(users) == {f.name for f in state.schema.user_features}
    assert ctx["properties"]["c_tags"]["items"]["anyOf"][1]["enum"] == ["morning", "evening", "night"]
    assert ctx["required"] == ["c_device", "c_temp", "c_dist", "c_tags"]
    assert "context" in doc["components"]["schemas"]["RecommendRequest"]["required"]
    validator = jsonschema.Draft202012Validator(_resolved(doc, "RecommendRequest"))
    model = request_models(state)[0]
    good = {"user_id": "new", "context": {"timestamp": TS, **STORED}, "user_features": COLD}
    for body in [good] + [v["value"] for v in recommend_examples(state).values()]:
        validator.validate(body)
        model.model_validate(body)
    bad = [({"user_features": {**COLD, "u_vec": [1, 2]}}, ("user_features", "u_vec")),
           ({"user_features": {"u_tags": ["a"] * 4}}, ("user_features", "u_tags")),
           ({"context": {"timestamp": TS, **STORED, "c_tags": ["noon"]}}, ("context", "c_tags")),
           ({"context": None}, ("context",))]
    for change, loc in bad:
        body = good | change
        assert not validator.is_valid(body), body
        with pytest.raises(ValidationError) as e:
            model.model_validate(body)
        assert [err["loc"] for err in e.value.errors()] == [loc]
    body = good | {"context": {"timestamp": TS}}       # the object rule: published, checked when resolved
    assert not validator.is_valid(body)
    e = error(plan_recommend, model.model_validate(body), state)
    assert e.field == "context.c_device" and e.status == 422


def _resolved(doc: dict, name: str) -> dict:
    """Component ``name`` with every ``$ref`` of the document inlined (jsonschema without a registry)."""
    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node
    return inline(doc["components"]["schemas"][name])


def test_model_info_lists_kinds_and_values(state):
    info = model_info(state, [])
    ctx = {f.name: f for f in info.context_schema}
    assert ctx["c_tags"].kind == "multi_hot" and ctx["c_tags"].values == ["morning", "evening", "night"]
    assert ctx["c_device"].values == ["ios", "android"] and ctx["c_dist"].boundaries == [1.0, 5.0]
    assert ctx["day_of_week"].source == "timestamp" and ctx["c_temp"].values is None and info.accepts_timestamp
    users = {f.name: f for f in info.user_feature_schema}
    assert {n: f.kind for n, f in users.items()} == {f.name: f.kind for f in fd.USER}
    assert users["u_vec"].dim == 4 and users["u_tags"].values == ["t1", "t2", "t3", "t4", "t5"]


@pytest.mark.parametrize("mode", ["user_tower", "trilinear", "scoring_layer"])
def test_cold_start_of_every_kind_is_the_model_with_those_overrides(recs, mode):
    rec = recs[mode]
    schema, model = rec.state.schema, rec.encoder.model
    ctx = resolve_context({"timestamp": TS, **STORED}, schema, rec.state.context_vocabs)
    feats = rec.state.users.encode_user_features(COLD)
    cold = QueryInput(0, np.zeros(schema.history_length, np.int64), ctx, feats)
    known = QueryInput(3, rec.state.users.history(3), ctx)
    got = rec.encoder.encode([known, cold, QueryInput(0, cold.history, ctx, {"u_cat": 1})])
    batch = {k: torch.as_tensor(v) for k, v in context_batch([ctx], schema).items()}
    batch |= {"user_idx": torch.zeros(1, dtype=torch.long), "history": torch.zeros(1, 4, dtype=torch.long)}
    batch |= {f.name: torch.as_tensor(feature_column(f, [feats[f.name]])) for f in schema.user_features}
    with torch.no_grad():
        np.testing.assert_allclose(got[1], model.query_embedding(batch)[0].numpy(), atol=1e-5)
        missing = batch | {"u_num": torch.tensor([math.nan]), "u_vec": torch.zeros(1, 4), "u_cat": torch.tensor([1]),
                           "u_bucket": torch.tensor([math.nan]), "u_tags": torch.zeros(1, 3, dtype=torch.long),
                           "u_bio": torch.zeros(1, 8, dtype=torch.long)}
        np.testing.assert_allclose(got[2], model.query_embedding(missing)[0].numpy(), atol=1e-5)
    for name, other in [("u_num", 60), ("u_vec", [-1, 0, 0, 0]), ("u_bucket", 55), ("u_tags", ["t2"]),
                        ("u_bio", "omega"), ("u_cat", "c")]:                   # every kind reaches the query
        changed = rec.state.users.encode_user_features({**COLD, name: other})
        assert not np.allclose(rec.encoder.encode([QueryInput(0, cold.history, ctx, changed)])[0], got[1]), name
    answer = rec.recommend("new", context={"timestamp": TS, **STORED}, user_features=COLD, k=5)
    assert answer.path == "cold_start" and answer.cold_start_strategy == "user_features"
    assert answer.context["c_tags"] == [1, 2] and len(answer.items) == 5
    unknown = rec.recommend("new", context={"timestamp": TS, **STORED}, user_features={"u_tags": ["nope"]}, k=3)
    assert unknown.cold_start_strategy == "popularity"                         # nothing known: popularity
