"""The demo page (``GET /demo``) and the user look-ups it needs (part of the public API).

    GET /demo                 the page: plain HTML + JS + CSS shipped in ``twotower/serve/static`` (no build
                              step, nothing fetched from elsewhere); it calls the API with relative URLs, so it
                              works under any route prefix
    GET /demo/{file}          its script and style sheet (only the shipped files)
    GET /v1/users             sample user ids (the page offers them): users spread over activity, most active first
    GET /v1/users/{user_id}   a user's most recent items with titles (``known: false`` for an unknown user:
                              ``POST /v1/recommend`` takes the cold-start path for them)

The page is described in ``docs/demo.md`` and tested in a real headless Chromium
(``tests/serve/test_serve_demo.py``).
"""
from __future__ import annotations

from importlib import resources

import numpy as np
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from .recommender import ServingState

STATIC_FILES = {"demo.js": "text/javascript; charset=utf-8", "demo.css": "text/css; charset=utf-8"}
MAX_SAMPLE_USERS, MAX_RECENT = 50, 100


class RecentItem(BaseModel):
    item_id: str
    title: str | None = None


class UserInfo(BaseModel):
    """Answer of ``GET /v1/users/{user_id}``: ``known`` (in the model's vocabulary), ``num_interactions``
    (over every split of the dataset), ``recent_items`` (most recent first, at most ``limit``)."""

    user_id: str
    known: bool
    num_interactions: int
    recent_items: list[RecentItem]


class SampleUsers(BaseModel):
    """Answer of ``GET /v1/users``: ``user_ids`` known users spread over activity (most active first);
    ``unknown_user_id`` an id the model does not know (its requests take the cold-start path)."""

    user_ids: list[str]
    unknown_user_id: str


def sample_users(state: ServingState, n: int) -> SampleUsers:
    """``n`` known users at evenly spaced ranks of activity (interaction count desc, then index asc)."""
    users = state.users
    raw = {idx: uid for uid, idx in users.user_vocab.items()}
    counts = np.diff(users.offsets)[1:]                                  # users 1..num_users-1
    order = np.lexsort((np.arange(len(counts)), -counts)) + 1
    picks = order[np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).astype(np.int64))]
    unknown = "new-visitor"
    while unknown in users.user_vocab:
        unknown += "-1"
    return SampleUsers(user_ids=[raw[int(u)] for u in picks if int(u) in raw], unknown_user_id=unknown)


def user_info(state: ServingState, user_id: str, limit: int) -> UserInfo:
    """The user's ``limit`` most recent items (with catalogue titles), most recent first."""
    idx = state.users.lookup(user_id.strip())
    if idx == 0:
        return UserInfo(user_id=user_id, known=False, num_interactions=0, recent_items=[])
    lo, hi = int(state.users.offsets[idx]), int(state.users.offsets[idx + 1])
    cat = state.catalogue
    recent = [RecentItem(item_id=str(cat.item_ids[i]), title=cat.title(int(i)))
              for i in state.users.items[lo:min(hi, lo + limit)]]
    return UserInfo(user_id=user_id, known=True, num_interactions=hi - lo, recent_items=recent)


def _static(name: str) -> str:
    return (resources.files("twotower.serve") / "static" / name).read_text(encoding="utf-8")


def add_demo_routes(api: FastAPI, state: ServingState) -> None:
    """Add the demo page and the user look-ups to ``api`` (the files are read once, here)."""
    page = _static("demo.html")
    files = {name: _static(name) for name in STATIC_FILES}

    @api.get("/demo", response_class=HTMLResponse, include_in_schema=False)
    async def demo() -> HTMLResponse:
        return HTMLResponse(page)

    @api.get("/demo/{name}", include_in_schema=False)
    async def demo_file(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, f"no file {name!r} in the demo")
        return Response(files[name], media_type=STATIC_FILES[name])

    samples = sample_users(state, 3)
    example_user = user_info(state, samples.user_ids[0], 3) if samples.user_ids else None

    def example(value: BaseModel | None) -> dict:
        return {200: {"content": {"application/json": {"example": value.model_dump() if value else {}}}}}

    @api.get("/v1/users", response_model=SampleUsers, responses=example(samples))
    async def users(limit: int = Query(8, ge=1, le=MAX_SAMPLE_USERS)) -> SampleUsers:
        """Sample user ids (spread over activity) and an unknown id, for trying the API."""
        return sample_users(state, limit)

    @api.get("/v1/users/{user_id:path}", response_model=UserInfo, responses=example(example_user))  # ids may hold "/"
    async def user(user_id: str, limit: int = Query(10, ge=1, le=MAX_RECENT)) -> UserInfo:
        """A user's most recent items with titles; ``known: false`` for a user the model does not know."""
        return user_info(state, user_id, limit)

