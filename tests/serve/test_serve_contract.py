"""The HTTP contract is exact: ``/openapi.json`` of a real Ray Serve app describes what the server accepts.

Property-based (schemathesis, generated from the served document, against real Serve on 127.0.0.1, for
the user_tower and trilinear apps): every schema-valid request is accepted (200, or the documented 404
for an unknown but well-formed item id), every schema-invalid body is a 422 naming a field, no answer
is a 5xx, and every answer conforms to its documented schema, status code and headers. Cases are
bounded and reproducible (fixed seed, derandomized, no example database); the counts are asserted and
printed at the end of each run. Plain tests: the requests of the issue are refused by the document
itself and still get their named 422; every documented example validates and is answered 200.
"""
from __future__ import annotations

import collections
import sys

import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from twotower.serve.schema import NON_SPACE, RecommendRequest, json_int, raw_id

SEED = 20240607
POSITIVE_EXAMPLES, NEGATIVE_EXAMPLES = 50, 30            # fuzzed cases per operation (plus examples, coverage)
APPS = ["user_tower", "trilinear"]
OK = {"POST /v1/recommend": {200}, "POST /v1/similar-items": {200, 404}, "GET /v1/model": {200},
      "GET /healthz": {200}, "GET /v1/users": {200}, "GET /v1/users/{user_id}": {200}}
COUNTS: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)


def _url(serve_apps, app: str) -> str:
    return {"user_tower": serve_apps.user_tower_url, "trilinear": serve_apps.trilinear_url}[app]


def _schema(request, serve_apps, mode: GenerationMode, max_examples: int):
    """The served document as a schemathesis schema: one generation mode, fixed seed, derandomized."""
    url = _url(serve_apps, request.param)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=60)
    schema.config.update(base_url=url, request_timeout=60)
    schema.config.seed = SEED
    schema.config.generation.update(modes=[mode], max_examples=max_examples, deterministic=True, database="none")
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    return schema


def _report(request, mode: str, minimum: int) -> None:
    """Print the cases each operation got (by status) and require at least ``minimum`` of each POST
    operation (the GETs take no input: one case each, plus the coverage phase's)."""
    counts = COUNTS[(request.param, mode)]
    line = f"schemathesis {schemathesis.__version__} {request.param} {mode} seed={SEED}: " + ", ".join(
        f"{op} {sum(c for (o, _), c in counts.items() if o == op)} cases "
        f"{dict(sorted((s, c) for (o, s), c in counts.items() if o == op))}" for op in sorted({o for o, _ in counts}))
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\n{line}")                       # shown without -s: the run's size belongs in its log
    posts = {o for o, _ in counts if o.startswith("POST")}
    assert len(posts) == 2 and all(sum(c for (o, _), c in counts.items() if o == op) >= minimum for op in posts), line


@pytest.fixture(scope="module", params=APPS)
def positive_schema(request, serve_apps):
    yield _schema(request, serve_apps, GenerationMode.POSITIVE, POSITIVE_EXAMPLES)
    _report(request, "positive", POSITIVE_EXAMPLES)


@pytest.fixture(scope="module", params=APPS)
def negative_schema(request, serve_apps):
    yield _schema(request, serve_apps, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES)
    _report(request, "negative", NEGATIVE_EXAMPLES // 2)


positive = schemathesis.pytest.from_fixture("positive_schema")
negative = schemathesis.pytest.from_fixture("negative_schema").include(method="POST")   # GETs take no input


def _check(case, response, app: str, mode: str) -> None:
    """The answer a case must get: a schema-valid one 200 (or the documented 404 for an unknown but
    well-formed item id), a schema-invalid one a 422 naming its field(s), another method a 405."""
    label, body = case.operation.label, response.json()
    COUNTS[(app, mode)][(label, response.status_code)] += 1
    if case.method.upper() != case.operation.method.upper():           # the coverage phase tries other methods
        assert response.status_code == 405 and body["error"] == "method_not_allowed", response.text
    elif case.meta is not None and case.meta.generation.mode.is_negative:
        assert response.status_code == 422 and body["error"] == "invalid_request", response.text
        assert body["fields"] and all(f in body["message"] for f in body["fields"]), body
    else:
        assert response.status_code in OK[label], response.text
        if response.status_code == 404:
            assert body["error"] == "not_found" and body["fields"] == ["item_id"], body


@pytest.mark.ray
@pytest.mark.timeout(900)
@positive.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_valid_requests_are_accepted(case, positive_schema, request):
    response = case.call_and_validate()          # no 5xx; status, headers and body as documented; 2xx/404
    _check(case, response, request.node.callspec.params["positive_schema"], "positive")


@pytest.mark.ray
@pytest.mark.timeout(900)
@negative.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_invalid_requests_are_a_422_naming_a_field(case, negative_schema, request):
    response = case.call_and_validate()          # refused with a documented 4xx, conforming to its schema
    _check(case, response, request.node.callspec.params["negative_schema"], "negative")


# ---- the published document itself ------------------------------------------------------------------
def _validator(doc: dict, component: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{component}",
                                            "components": doc["components"]})


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_the_issue_requests_are_refused_by_the_schema_and_the_server(serve_apps):
    base = serve_apps.user_tower_url
    doc = requests.get(f"{base}/openapi.json", timeout=60).json()
    recommend, similar = _validator(doc, "RecommendRequest"), _validator(doc, "SimilarItemsRequest")
    refused = [("/v1/similar-items", similar, {"item_id": ""}, "item_id"),
               ("/v1/similar-items", similar, {"item_id": "  "}, "item_id"),
               ("/v1/recommend", recommend, {"user_id": "ghost", "user_features": {"x": 0}}, "user_features.x"),
               ("/v1/recommend", recommend, {"user_id": "1", "context": {"hour_of_day": 3}}, "context.hour_of_day"),
               ("/v1/recommend", recommend, {"user_id": "1", "context": {"timestamp": 1, "day_of_week": 9}},
                "context.day_of_week"),
               ("/v1/recommend", recommend, {"user_id": "1", "context": {"hour_sin": 0.5}}, "context.hour_cos")]
    for path, validator, body, field in refused:
        assert not validator.is_valid(body), body
        r = requests.post(f"{base}{path}", json=body, timeout=60)
        assert r.status_code == 422 and field in r.json()["fields"] and field in r.json()["message"], r.text
    components = doc["components"]["schemas"]
    ctx, feats = components["RecommendContext"], components["UserFeatures"]
    assert ctx["additionalProperties"] is False and feats["additionalProperties"] is False
    assert set(ctx["properties"]) == {"hour_sin", "hour_cos", "day_of_week", "is_weekend", "timestamp"}
    assert set(feats["properties"]) == {"gender", "age_bucket", "occupation", "zip_prefix"}
    assert "Saturday" in ctx["properties"]["day_of_week"]["anyOf"][1]["enum"]
    assert feats["properties"]["gender"]["anyOf"][0]["enum"] == ["F", "M"]
    k = components["RecommendRequest"]["properties"]["k"]
    assert (k["type"], k["minimum"], k["maximum"]) == ("integer", 1, 1000)
    assert components["SimilarItemsRequest"]["properties"]["item_id"]["anyOf"][0]["minLength"] == 1


@pytest.mark.ray
@pytest.mark.timeout(900)
@pytest.mark.parametrize("app", APPS)
def test_every_documented_example_is_valid_and_answered(serve_apps, app):
    base = _url(serve_apps, app)
    doc = requests.get(f"{base}/openapi.json", timeout=60).json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            examples = [e["value"] for e in (body or {}).get("examples", {}).values()]
            assert examples or method == "get", (method, path)
            for value in examples:
                _validator(doc, body["schema"]["$ref"].rsplit("/", 1)[1]).validate(value)
                r = requests.post(f"{base}{path}", json=value, timeout=60)
                assert r.status_code == 200, (path, value, r.text)
            for status, answer in op["responses"].items():
                content = answer.get("content", {}).get("application/json", {})
                if "example" in content and "$ref" in content.get("schema", {}):
                    _validator(doc, content["schema"]["$ref"].rsplit("/", 1)[1]).validate(content["example"])
            assert any("example" in a.get("content", {}).get("application/json", {})
                       for a in op["responses"].values()), (method, path)


# ---- the pieces the document is made of (no Ray) -----------------------------------------------------
def test_non_space_is_what_strip_removes():
    import re
    spaces = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert {c for c in spaces if not re.fullmatch(NON_SPACE, c)} == spaces
    assert all(re.fullmatch(NON_SPACE, chr(c)) for c in range(0, sys.maxunicode + 1, 97) if chr(c) not in spaces)


def test_integers_and_ids_as_json_schema_reads_them():
    assert json_int(10) == json_int(10.0) == 10
    for bad in (True, "10", 10.5, float("inf"), None):
        with pytest.raises(ValueError):
            json_int(bad)
    assert raw_id(" 7 ") == "7" and raw_id(50) == raw_id(50.0) == "50"
    for bad in ("", " \u3000\x1c", True, None, 1.5, [1]):
        with pytest.raises(ValueError):
            raw_id(bad)
    assert RecommendRequest.model_validate({"user_id": 7, "k": 5.0}).k == 5


def test_generated_models_and_document_agree_without_ray(ml100k_dataset):
    from pydantic import ValidationError

    from twotower.model.config import ContextMode
    from twotower.model.schema import DatasetSchema
    from twotower.serve.catalogue import Catalogue
    from twotower.serve.context import context_vocabs
    from twotower.serve.contract import request_models
    from twotower.serve.recommender import ServingState
    from twotower.serve.routes import build_api
    from twotower.serve.user_state import UserState

    schema = DatasetSchema.load(ml100k_dataset)
    state = ServingState(schema, ContextMode.USER_TOWER, "test", UserState.load(ml100k_dataset, schema),
                         Catalogue.load(ml100k_dataset), context_vocabs(schema, ml100k_dataset))
    doc = build_api(state, backend=None, num_shards=1).openapi()
    recommend_model, similar_model = request_models(state)
    cases = [(similar_model, "SimilarItemsRequest", {"item_id": ""}, ("item_id",)),
             (recommend_model, "RecommendRequest", {"user_id": "u", "user_features": {"x": 0}}, ("user_features", "x")),
             (recommend_model, "RecommendRequest", {"user_id": "u", "context": {"x": 0}}, ("context", "x")),
             (recommend_model, "RecommendRequest", {"user_id": "u", "context": {"is_weekend": 2e6}},
              ("context", "is_weekend"))]
    for model, component, body, loc in cases:
        assert not _validator(doc, component).is_valid(body), body
        with pytest.raises(ValidationError) as e:
            model.model_validate(body)
        assert [err["loc"] for err in e.value.errors()] == [loc]
    ok = {"user_id": 3, "k": 7.0, "context": {"day_of_week": "Sunday", "hour_sin": 1, "hour_cos": 0.0,
                                               "is_weekend": True}, "user_features": {"gender": "X", "zip_prefix": 5}}
    _validator(doc, "RecommendRequest").validate(ok)
    got = recommend_model.model_validate(ok)
    assert got.k == 7 and got.context == ok["context"] and got.user_features == ok["user_features"]
