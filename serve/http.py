"""The FastAPI application object and its error mapping (every error body is a :class:`ErrorBody`).

Status codes:

* 422 ``invalid_request``: validation of the body by the request model the OpenAPI document publishes
  (wrong type, k out of 1..1000, unknown or missing field, a context or user feature value the model
  does not take, malformed JSON or a body that is not UTF-8) and :class:`RequestError` (the checks
  JSON Schema cannot express in the document's terms, e.g. a context that names some fields but
  neither all of them nor ``timestamp``). ``message`` and ``fields`` name the offending field(s),
  e.g. ``k``, ``context.hour_sin``.
* 404 ``not_found``: unknown ``item_id`` in ``/v1/similar-items``.
* 503 ``unavailable``: the index shards or the encoder cannot answer right now (starting, a replica
  restarting after a crash, a call past ``AppArgs.backend_timeout_s``). ``unavailable`` lists the
  deployments (``Searcher1``, ``QueryEncoder``); the ``Retry-After`` header (and ``retry_after_s``)
  says when to retry.
* 500 ``internal``: a bug; never caused by request content.

Starlette's own errors (an unknown path 404, a wrong method 405) are ErrorBody answers too.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .schema import ErrorBody, RequestError, Unavailable

log = logging.getLogger("twotower.serve")


def error_response(status: int, error: str, message: str, fields: list[str] | None = None,
                   headers: dict | None = None, **extra) -> JSONResponse:
    """JSON :class:`ErrorBody` answer; ``extra``: the optional ErrorBody fields (``unavailable``, ...)."""
    body = ErrorBody(error=error, message=message, fields=fields or [], **extra)
    return JSONResponse(status_code=status, content=body.model_dump(exclude_none=True), headers=headers)


def _field(loc: tuple) -> str:
    """``("body", "context", "hour_sin")`` -> ``context.hour_sin``; the JSON body itself -> ``body``."""
    parts = [str(p) for p in (loc[1:] if loc and loc[0] == "body" else loc)]
    return ".".join(parts) if parts else "body"


def validation_message(errors: list[dict]) -> tuple[str, list[str]]:
    """One line per pydantic error, ``<field>: <message>``, and the distinct field names."""
    fields, lines = [], []
    for e in errors:
        name = "body" if e.get("type") == "json_invalid" else _field(tuple(e.get("loc", ())))
        if e.get("type") == "missing":
            msg = "field required"
        elif e.get("type") == "extra_forbidden":
            msg = "unknown field"
        else:
            msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            msg = f"malformed JSON: {e.get('ctx', {}).get('error', msg)}"
        fields.append(name)
        lines.append(f"{name}: {msg}")
    return "; ".join(lines), list(dict.fromkeys(fields))


def create_api() -> FastAPI:
    """FastAPI app with the error handlers installed; routes are added by the ingress deployment."""
    api = FastAPI(title="twotower retrieval", version="1",
                  description="Context-aware top-k retrieval over sharded FAISS indexes (two-tower model).")

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, fields = validation_message(list(exc.errors()))
        return error_response(422, "invalid_request", message, fields)

    @api.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        if exc.status_code == 400:        # FastAPI could not read the body (not UTF-8: not JSON at all)
            return error_response(422, "invalid_request", f"body: malformed JSON: {exc.detail}", ["body"])
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, error, str(exc.detail), headers=exc.headers)

    @api.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return error_response(exc.status, "not_found" if exc.status == 404 else "invalid_request",
                              str(exc), [exc.field])

    @api.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable):
        response = error_response(503, "unavailable", str(exc), unavailable=exc.deployments,
                                  retry_after_s=exc.retry_after_s)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @api.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, "internal", f"internal error: {type(exc).__name__}")

    return api
