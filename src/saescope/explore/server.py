"""The explorer's HTTP server: a JSON API over one feature index, the web page, and live search and steering.

Safety, because the server runs on a researcher's machine next to their files:

* it binds to 127.0.0.1 unless told otherwise (``saescope serve --host``);
* every input is bounded and validated (names by pattern, latent indices by the dictionary's width, prompt
  length in characters and tokens, the number of dictionaries and interventions, strengths, token counts);
  a bad input is a 4xx JSON error, and an unexpected failure is a 500 without a traceback (logged here);
* request bodies are limited to :data:`MAX_BODY_BYTES` (and must declare their length), and answers are bounded
  too: a search names each dictionary once however often it is asked for, and is refused (400) before the model
  runs when its answer could exceed :data:`saescope.explore.live.MAX_SEARCH_ANSWER_BYTES`;
* every 4xx a route can answer is documented in the OpenAPI schema (:data:`ERRORS`);
* the database is opened read-only, static files come only from the package, and no endpoint takes a path:
  dictionaries and plots are looked up by name in the index.

Endpoints: ``GET /api/suite``, ``GET /api/saes/{name}`` (with ``write_sites`` and, for a CLT or crosscoder
block, ``parent``), ``GET /api/saes/{name}/latents`` (sortable, paged), ``GET /api/saes/{name}/latents/{latent}``
(the feature page, with ``writes``: the latent's decoder norm at each site it writes, ``shipped_examples``:
the top examples a Gemma Scope 2 release ships in its ``examples.safetensors``, and ``autointerp``: its
explanations and detection scores from ``saescope autointerp``, empty without), ``.../neuronpedia``
(Neuronpedia JSON), ``GET /api/assets/{name}`` (report plots), ``POST /api/search``, ``POST /api/steer``;
``GET /`` is the page and ``/openapi.json`` the schema.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from saescope.explore.export import STATIC_FOLDER, STATIC_PACKAGE, neuronpedia_feature
from saescope.explore.live import (
    MAX_SEARCH_ANSWER_BYTES,
    Intervention,
    LiveModel,
    LiveUnavailableError,
    PromptTooLongError,
    SearchTooLargeError,
)
from saescope.explore.sources import NAME_PATTERN
from saescope.explore.store import IndexReader, SaeRow

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 4000
MAX_LATENT_INDEX = 2**31 - 1
MAX_PAGE = 1000
MAX_SEARCH_SAES = 512
MAX_INTERVENTIONS = 8
MAX_NEW_TOKENS = 64
#: Steering strengths are multiples of the latent's maximum activation in the index.
MAX_STRENGTH = 100.0

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN.pattern, max_length=200)]
NamePath = Annotated[str, PathParam(pattern=NAME_PATTERN.pattern, max_length=200)]
LatentPath = Annotated[int, PathParam(ge=0, le=MAX_LATENT_INDEX)]
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS)]


class SearchRequest(BaseModel):
    """Run the model on ``text`` with the chosen dictionaries (all when ``saes`` is empty)."""

    model_config = ConfigDict(extra="forbid")
    text: Prompt
    saes: list[Name] = Field(default_factory=list, max_length=MAX_SEARCH_SAES)
    per_token: int = Field(5, ge=1, le=20, description="top latents listed per token and dictionary")
    features: int = Field(10, ge=1, le=50, description="most active latents listed per dictionary")


class SteerIntervention(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sae: Name
    latent: int = Field(ge=0, le=MAX_LATENT_INDEX)
    strength: float = Field(
        ge=-MAX_STRENGTH, le=MAX_STRENGTH, allow_inf_nan=False,
        description="multiple of the latent's maximum activation in the index added along its decoder direction",
    )  # fmt: skip


class SteerRequest(BaseModel):
    """Generate a continuation of ``text`` with and without the interventions, with the same seed."""

    model_config = ConfigDict(extra="forbid")
    text: Prompt
    interventions: list[SteerIntervention] = Field(min_length=1, max_length=MAX_INTERVENTIONS)
    max_new_tokens: int = Field(24, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0 = greedy")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ErrorMessage(BaseModel):
    """A 4xx answer other than a validation error (422, whose ``detail`` is a list of problems)."""

    detail: str


#: The 4xx answers the routes document besides FastAPI's own 422 (status -> what it means).
ERRORS: dict[int, str] = {
    400: "the body cannot be parsed (e.g. it is not UTF-8), or the answer would exceed its size bound",
    404: "no dictionary, latent or asset of that name in this index",
    411: "the request body does not declare its length (Content-Length)",
    413: f"the request body is over {MAX_BODY_BYTES} bytes",
    503: "live search and steering are off (no model), or the model or dictionaries cannot be loaded",
}
_READ_ERRORS = (404,)
_LIVE_ERRORS = (400, 404, 411, 413, 503)


def _documented(codes: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that answers ``codes`` (FastAPI adds 422 for routes with parameters)."""
    return {code: {"model": ErrorMessage, "description": ERRORS[code]} for code in codes}


ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (413) and bodies of undeclared length (411) before they are read.

    The HTTP server (h11) enforces the declared Content-Length when reading, so checking it is enough.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            problem: tuple[int, str] | None = None
            if length is None or not length.isdigit():
                problem = (411, "a request body needs a Content-Length header")
            elif int(length) > self.max_bytes:
                problem = (413, f"request bodies are limited to {self.max_bytes} bytes")
            if problem is not None:
                response = JSONResponse({"detail": problem[1]}, status_code=problem[0])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Scripts and styles only from here; inline style attributes carry the token highlighting.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
}


def _static_text(name: str) -> str:
    return resources.files(STATIC_PACKAGE).joinpath(STATIC_FOLDER, name).read_text(encoding="utf-8")


def create_app(index: Path | IndexReader, *, live: LiveModel | None = None) -> FastAPI:
    """The explorer application for one index; ``live`` enables search and steering (None: they answer 503)."""
    reader = index if isinstance(index, IndexReader) else IndexReader(index)
    app = FastAPI(
        title="saescope explorer",
        description="Browse the features of a suite of sparse autoencoders; search and steer with the model.",
        version=str(reader.meta.get("saescope_version", "")),
        docs_url=None,  # the interactive docs load scripts from a CDN; the schema stays at /openapi.json
        redoc_url=None,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        # The errors without the offending input (it can be a 64 kB prompt) nor pydantic's internals.
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                   for e in error.errors()]  # fmt: skip
        return JSONResponse({"detail": details}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, _error: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error (the server log has the details)"}, status_code=500)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    def sae_or_404(name: str) -> SaeRow:
        sae = reader.sae(name)
        if sae is None:
            raise HTTPException(404, f"no dictionary named {name!r} in this index")
        return sae

    def latent_or_404(sae: SaeRow, latent: int) -> dict[str, Any]:
        feature = reader.feature(sae, latent) if latent < sae.width else None
        if feature is None:
            raise HTTPException(404, f"latent {latent} is out of range: {sae.name} has latents 0-{sae.width - 1}")
        return feature

    def live_or_503() -> LiveModel:
        if live is None:
            raise HTTPException(503, "live search and steering are off: this server was started without a model")
        return live

    @app.get("/api/suite", summary="What was indexed, and one row per dictionary with its metrics")
    def suite() -> dict[str, Any]:
        return {**reader.suite(), "live": live is not None}

    @app.get(
        "/api/saes/{name}",
        summary="One dictionary: sites, parent, widths, index summary, evaluation metrics",
        responses=_documented(_READ_ERRORS),
    )
    def sae_page(name: NamePath) -> dict[str, Any]:
        return {"sae": sae_or_404(name).to_dict()}

    @app.get(
        "/api/saes/{name}/latents",
        summary="A page of a dictionary's latents, sorted and filtered",
        responses=_documented(_READ_ERRORS),
    )
    def latents(
        name: NamePath,
        sort: Annotated[
            Literal["index", "density", "max_activation", "mean_activation", "detection"], Query()
        ] = "index",
        order: Annotated[Literal["asc", "desc"], Query()] = "asc",
        dead: Annotated[Literal["show", "hide", "only"], Query()] = "show",
        offset: Annotated[int, Query(ge=0, le=MAX_LATENT_INDEX)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> dict[str, Any]:
        sae = sae_or_404(name)
        total, rows = reader.latents(sae, sort=sort, descending=order == "desc", dead=dead, offset=offset, limit=limit)
        return {"total": total, "offset": offset, "limit": limit, "latents": rows}

    @app.get(
        "/api/saes/{name}/latents/{latent}",
        summary="The feature page of one latent, with where it writes",
        responses=_documented(_READ_ERRORS),
    )
    def feature(name: NamePath, latent: LatentPath) -> dict[str, Any]:
        return latent_or_404(sae_or_404(name), latent)

    @app.get(
        "/api/saes/{name}/latents/{latent}/neuronpedia",
        summary="One latent as Neuronpedia feature JSON",
        responses=_documented(_READ_ERRORS),
    )
    def neuronpedia(name: NamePath, latent: LatentPath) -> dict[str, Any]:
        sae = sae_or_404(name)
        return neuronpedia_feature(reader, sae, latent_or_404(sae, latent))

    @app.get(
        "/api/assets/{name}",
        summary="A plot of the run's evaluation report (by name, from the index)",
        responses=_documented(_READ_ERRORS),
    )
    def asset(name: NamePath) -> Response:
        found = reader.asset(name)
        if found is None:
            raise HTTPException(404, f"no asset named {name!r}")
        return Response(found[1], media_type=found[0])

    @app.post(
        "/api/search",
        summary="Run a prompt: per token its top latents, per latent its activations",
        responses=_documented(_LIVE_ERRORS),
    )
    def search(request: SearchRequest) -> dict[str, Any]:
        model = live_or_503()
        names = list(dict.fromkeys(request.saes))  # each dictionary once, however often it is named
        for name in names:
            sae_or_404(name)
        try:
            return model.search(
                request.text, names, per_token=request.per_token, features=request.features,
                max_bytes=MAX_SEARCH_ANSWER_BYTES,
            )  # fmt: skip
        except (PromptTooLongError, SearchTooLargeError, LiveUnavailableError, KeyError) as error:
            raise _live_error(error) from error

    @app.post(
        "/api/steer",
        summary="Default and steered continuations of a prompt, side by side",
        responses=_documented(_LIVE_ERRORS),
    )
    def steer(request: SteerRequest) -> dict[str, Any]:
        model = live_or_503()
        interventions = []
        for item in request.interventions:
            sae = sae_or_404(item.sae)
            row = latent_or_404(sae, item.latent)
            unit = row["max_activation"] if row["max_activation"] > 0 else sae.summary["median_max_activation"]
            interventions.append(Intervention(item.sae, item.latent, item.strength * unit))
        try:
            result = model.steer(
                request.text, interventions, max_new_tokens=request.max_new_tokens,
                temperature=request.temperature, seed=request.seed,
            )  # fmt: skip
        except (PromptTooLongError, LiveUnavailableError, KeyError) as error:
            raise _live_error(error) from error
        return {**result, "interventions": [vars(i) for i in interventions]}

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"))

    app.mount("/static", StaticFiles(packages=[(STATIC_PACKAGE, STATIC_FOLDER)]), name="static")
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    return app


def _live_error(error: Exception) -> HTTPException:
    """The HTTP error for a failure of the live model: a too-long prompt, a model that cannot load, or a
    dictionary of the index that the live model does not have."""
    if isinstance(error, PromptTooLongError):  # shaped as a validation error, as the schema's 422 says
        return HTTPException(422, [{"loc": ["body", "text"], "msg": str(error), "type": "too_many_tokens"}])
    if isinstance(error, SearchTooLargeError):
        return HTTPException(400, str(error))
    if isinstance(error, LiveUnavailableError):
        return HTTPException(503, str(error))
    return HTTPException(404, str(error.args[0]) if error.args else "not found")
