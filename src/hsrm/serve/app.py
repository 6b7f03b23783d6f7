"""The FastAPI app: OpenAI's completions and chat schemas, reward endpoints, health and metrics.

``best_of`` keeps OpenAI's meaning ("draw best_of, return the n best") with the head's score in
place of the log-probability; each returned choice carries ``"hsrm": {"score", "rank"}`` (rank 1
is the best of all best_of samples) and ``usage.completion_tokens`` counts every generated token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from hsrm.capture import SampleConfig
from hsrm.errors import HsrmError
from hsrm.lm import encode as _encode
from hsrm.lm import prompt_text
from hsrm.scoring import Scorer, as_messages
from hsrm.serve.config import ServeConfig
from hsrm.serve.engine import Engine, QueueFull, Sample
from hsrm.serve.metrics import Metrics
from hsrm.tasks.base import Prompt

#: Endpoints that answer without an API key (liveness probes and scrapers).
OPEN_PATHS = ("/health", "/metrics")
KNOWN_PATHS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/score",
    "/get_reward",
    "/v1/models",
    "/health",
    "/metrics",
)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs
MAX_STOP = 4  # OpenAI's limit for stop sequences
DISCONNECT_POLL_S = 0.2


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type, self.code, self.headers = type, code, headers

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# -- request schemas (unknown fields are ignored, as vLLM does) ------------------------------------
class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _SamplingReq(_Req):
    """The sampling fields the completions and chat schemas share."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    best_of: int | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None


class CompletionRequest(_SamplingReq):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool | None = False


class ChatMessage(_Req):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_SamplingReq):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None


class ScoreRequest(_Req):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    completions: list[str] = Field(min_length=1)


class RewardRequest(_Req):
    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: Any = None


# -- helpers ---------------------------------------------------------------------------------------
def _messages(msgs: list[ChatMessage]) -> tuple[dict[str, str], ...]:
    try:
        return as_messages([{"role": m.role, "content": m.content or ""} for m in msgs])
    except HsrmError as e:
        raise ApiError(400, str(e), "messages") from None


def _stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"stop: at most {MAX_STOP} sequences, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise ApiError(400, "stop: sequences must be non-empty", "stop")
    return stops


class _Ctx:
    """What the handlers share: config, scorer, engine, metrics."""

    def __init__(self, cfg: ServeConfig, scorer: Scorer):
        self.cfg, self.scorer = cfg, scorer
        self.metrics = Metrics()
        self.engine = Engine(
            scorer,
            self.metrics,
            max_queue=cfg.max_queue,
            max_batch=cfg.max_batch,
            batch_wait=cfg.batch_wait_ms / 1000.0,
        )
        self.name = cfg.served_model_name or cfg.model
        self.created = int(time.time())

    # -- validation ----------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(
                404,
                f"The model '{model}' does not exist; this server serves '{self.name}'",
                "model",
                code="model_not_found",
            )

    def sampling(
        self,
        *,
        n: int | None,
        best_of: int | None,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        top_logprobs: int,
        stream: bool,
    ) -> SampleConfig:
        c = self.cfg
        n = 1 if n is None else n
        if n < 1:
            raise ApiError(400, f"n must be >= 1, got {n}", "n")
        if best_of is None:
            # Streaming cannot rank, so it draws exactly n; otherwise the server's default.
            best_of = n if stream else max(n, c.best_of)
        if best_of < n:
            raise ApiError(400, f"best_of ({best_of}) must be >= n ({n})", "best_of")
        if best_of > c.max_best_of:
            raise ApiError(
                400, f"best_of ({best_of}) exceeds this server's limit ({c.max_best_of})", "best_of"
            )
        if stream and best_of > n:
            raise ApiError(
                400, "best_of > n cannot be streamed; drop stream or set best_of = n", "stream"
            )
        mt = c.default_max_tokens if max_tokens is None else max_tokens
        if not 1 <= mt <= c.max_tokens:
            raise ApiError(400, f"max_tokens must be in 1..{c.max_tokens}, got {mt}", "max_tokens")
        t = 1.0 if temperature is None else temperature
        if not 0 <= t <= 2:
            raise ApiError(400, f"temperature must be in [0, 2], got {t}", "temperature")
        p = 1.0 if top_p is None else top_p
        if not 0 < p <= 1:
            raise ApiError(400, f"top_p must be in (0, 1], got {p}", "top_p")
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ApiError(
                400, f"logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {top_logprobs}", "logprobs"
            )
        return SampleConfig(
            n=best_of,
            temperature=t,
            top_p=p,
            max_new_tokens=mt,
            seed=0,  # the per-request seed goes into the prompt id (see _prompts)
            top_logprobs=top_logprobs,
        )

    def prompt_tokens(self, prompt: Prompt) -> int:
        k = len(_encode(self.scorer.lm.tokenizer, prompt_text(self.scorer.lm.tokenizer, prompt)))
        if k > self.cfg.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {k} tokens; this server accepts at most "
                f"{self.cfg.max_prompt_tokens}",
                "prompt",
                code="context_length_exceeded",
            )
        return k

    # -- running jobs --------------------------------------------------------------------------
    async def run(self, request: Request, submit) -> Any:
        """Submit a job (429 when the queue is full) and await it; None if the client left."""
        if await request.is_disconnected():
            self.metrics.add("disconnects")
            return None
        try:
            job = submit()
        except QueueFull as e:
            raise ApiError(
                429,
                f"the server is busy: {e}; retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if job.future not in done:  # the client left: drop the job before it costs
            job.cancelled.set()
            job.future.cancel()
            return None
        try:
            return job.future.result()
        except HsrmError as e:
            raise ApiError(400, str(e)) from None


async def _wait_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


def _with_stop(cfg: SampleConfig, stop: list[str]) -> SampleConfig:
    """Let a sampler that knows stop strings end answers early (it saves decode steps); the
    engine cuts the text at the stop string either way."""
    if stop and "stop" in {f.name for f in dataclasses.fields(SampleConfig)}:
        return dataclasses.replace(cfg, stop=tuple(stop))  # type: ignore[call-arg]
    return cfg


def _seed(seed: int | None) -> int:
    return secrets.randbits(62) if seed is None else int(seed)


def _ranked(samples: list[Sample], n: int) -> list[tuple[int, Sample]]:
    """The n best samples by head score, best first, as (rank, sample); ties keep draw order."""
    order = sorted(range(len(samples)), key=lambda i: -samples[i].score)
    return [(r + 1, samples[i]) for r, i in enumerate(order[:n])]


def _token_str(tok: Any, tid: int) -> str:
    return tok.decode([tid], skip_special_tokens=False)


def _completion_logprobs(tok: Any, s: Sample, k: int) -> dict[str, Any]:
    a = s.answer
    tokens = [_token_str(tok, t) for t in a.token_ids]
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    top = None
    if k:
        tv, ti = a.extra["top_logprobs"], a.extra["top_ids"]  # (T, k)
        top = [
            {_token_str(tok, int(i)): float(v) for v, i in zip(tv[j], ti[j])}
            for j in range(len(tokens))
        ]
    return {
        "tokens": tokens,
        "token_logprobs": [float(x) for x in a.logprobs],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def _chat_logprobs(tok: Any, s: Sample, k: int) -> dict[str, Any]:
    a = s.answer
    content = []
    for j, tid in enumerate(a.token_ids):
        t = _token_str(tok, tid)
        tops = []
        if k:
            tv, ti = a.extra["top_logprobs"][j], a.extra["top_ids"][j]
            for v, i in zip(tv, ti):
                ts = _token_str(tok, int(i))
                tops.append({"token": ts, "logprob": float(v), "bytes": list(ts.encode())})
        content.append(
            {
                "token": t,
                "logprob": float(a.logprobs[j]),
                "bytes": list(t.encode()),
                "top_logprobs": tops,
            }
        )
    return {"content": content}


def _usage(prompt_tokens: int, groups: list[list[Sample]]) -> dict[str, int]:
    gen = sum(s.generated_tokens for g in groups for s in g)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": gen,
        "total_tokens": prompt_tokens + gen,
    }


def _sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
    async def gen() -> AsyncIterator[str]:
        for c in chunks:
            yield f"data: {json.dumps(c)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream")


def _reply(
    obj: str,
    chunk_obj: str,
    rid: str,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, Any],
    stream: bool,
    stream_options: dict[str, Any] | None,
) -> Any:
    """An OpenAI response object (``obj``), or streamed: one ``chunk_obj`` chunk per choice, then a
    chunk with the usage and no choices when ``stream_options.include_usage`` asks for it."""
    head = {
        "id": rid,
        "object": chunk_obj if stream else obj,
        "created": int(time.time()),
        "model": model,
    }
    if not stream:
        return {**head, "choices": choices, "usage": usage}
    chunks = [{**head, "choices": [c]} for c in choices]
    if (stream_options or {}).get("include_usage"):
        chunks.append({**head, "choices": [], "usage": usage})
    return _sse(chunks)


def _client_closed() -> Response:
    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


# -- the app ---------------------------------------------------------------------------------------
def create_app(cfg: ServeConfig, lm: Any = None, head: Any = None) -> FastAPI:
    """The server's app. ``lm`` / ``head``: a loaded model and a fitted head (or its folder);
    loaded from ``cfg.model`` / ``cfg.head`` when not given. A head fit on another model is refused
    here (``HsrmError`` naming both fingerprints)."""
    from hsrm.heads.base import Head
    from hsrm.models import load_model

    if head is None:
        cfg.validate()
        head = Head.load(cfg.head)
    elif isinstance(head, str):
        head = Head.load(head)
    if lm is None:
        lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    scorer = Scorer(lm, head)  # raises HsrmError on a fingerprint mismatch
    ctx = _Ctx(cfg, scorer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx.engine.start()
        try:
            yield
        finally:
            # uvicorn has finished in-flight requests (SIGTERM) before this runs.
            await asyncio.to_thread(ctx.engine.stop)

    app = FastAPI(title="hsrm serve", lifespan=lifespan)
    app.state.ctx = ctx

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(e).__name__}", type="server_error").response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        if any(err.get("type") == "json_invalid" for err in errs):
            return ApiError(400, "the request body is not valid JSON").response()
        first = errs[0] if errs else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = f"{loc}: {first.get('msg', 'invalid request')}" if loc else "invalid request body"
        return ApiError(422, msg, loc or None).response()

    app.add_middleware(_AuthAndMetrics, ctx=ctx)

    # -- OpenAI: completions -----------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        ctx.check_model(body.model)
        if body.echo:
            raise ApiError(400, "echo is not supported", "echo")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts or len(prompts) > cfg.max_prompts:
            raise ApiError(
                400, f"prompt: give 1..{cfg.max_prompts} prompts, got {len(prompts)}", "prompt"
            )
        k = body.logprobs or 0
        scfg = ctx.sampling(
            n=body.n,
            best_of=body.best_of,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_logprobs=k,
            stream=bool(body.stream),
        )
        stop = _stop_list(body.stop)
        scfg = _with_stop(scfg, stop)
        seed = _seed(body.seed)
        ps = [
            Prompt(id=f"{seed}:{i}", messages=(), answer="", prefill=p)
            for i, p in enumerate(prompts)
        ]
        n_prompt = sum(ctx.prompt_tokens(p) for p in ps)
        groups = await ctx.run(request, lambda: ctx.engine.submit_sample(ps, scfg, stop))
        if groups is None:
            return _client_closed()
        ctx.metrics.add("prompt_tokens", n_prompt)
        n = body.n or 1
        tok = ctx.scorer.lm.tokenizer
        choices: list[dict[str, Any]] = []
        for g in groups:
            for rank, s in _ranked(g, n):
                choices.append(
                    {
                        "index": len(choices),
                        "text": s.text,
                        "logprobs": _completion_logprobs(tok, s, k)
                        if body.logprobs is not None
                        else None,
                        "finish_reason": s.finish_reason,
                        "hsrm": {"score": s.score, "rank": rank},
                    }
                )
        return _reply(
            "text_completion", "text_completion", f"cmpl-{uuid.uuid4().hex}", ctx.name, choices,
            _usage(n_prompt, groups), bool(body.stream), body.stream_options,
        )  # fmt: skip

    # -- OpenAI: chat ------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Any:
        ctx.check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        k = (body.top_logprobs or 0) if body.logprobs else 0
        scfg = ctx.sampling(
            n=body.n,
            best_of=body.best_of,
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_logprobs=k,
            stream=bool(body.stream),
        )
        stop = _stop_list(body.stop)
        scfg = _with_stop(scfg, stop)
        seed = _seed(body.seed)
        prompt = Prompt(id=f"{seed}:0", messages=_messages(body.messages), answer="")
        n_prompt = ctx.prompt_tokens(prompt)
        groups = await ctx.run(request, lambda: ctx.engine.submit_sample([prompt], scfg, stop))
        if groups is None:
            return _client_closed()
        ctx.metrics.add("prompt_tokens", n_prompt)
        tok = ctx.scorer.lm.tokenizer
        key = "delta" if body.stream else "message"
        choices = [
            {
                "index": i,
                key: {"role": "assistant", "content": s.text},
                "logprobs": _chat_logprobs(tok, s, k) if body.logprobs else None,
                "finish_reason": s.finish_reason,
                "hsrm": {"score": s.score, "rank": rank},
            }
            for i, (rank, s) in enumerate(_ranked(groups[0], body.n or 1))
        ]
        return _reply(
            "chat.completion", "chat.completion.chunk", f"chatcmpl-{uuid.uuid4().hex}", ctx.name,
            choices, _usage(n_prompt, groups), bool(body.stream), body.stream_options,
        )  # fmt: skip

    # -- rewards -----------------------------------------------------------------------------------
    async def _score_pairs(request: Request, prompts: list[Any], completions: list[str]):
        if len(completions) > cfg.max_score_items:
            raise ApiError(
                400,
                f"at most {cfg.max_score_items} completions per request, got {len(completions)}",
            )
        return await ctx.run(
            request,
            lambda: ctx.engine.submit_call(lambda: ctx.scorer.score_pairs(prompts, completions)),
        )

    @app.post("/v1/score")
    async def score(body: ScoreRequest, request: Request) -> Any:
        ctx.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give exactly one of 'prompt' (text) or 'messages'", "prompt")
        prompt: Any = body.prompt if body.prompt is not None else _messages(body.messages or [])
        scores = await _score_pairs(request, [prompt] * len(body.completions), body.completions)
        if scores is None:
            return _client_closed()
        return {"object": "list", "model": ctx.name, "scores": scores}

    @app.post("/get_reward")
    async def get_reward(body: RewardRequest, request: Request) -> Any:
        if body.prompts is None:
            raise ApiError(
                400,
                "'prompts' is required: it tells where each answer starts in its query",
                "prompts",
            )
        if len(body.prompts) != len(body.query):
            raise ApiError(
                400, f"{len(body.query)} queries but {len(body.prompts)} prompts", "prompts"
            )
        tok = ctx.scorer.lm.tokenizer
        pad = tok.pad_token or ""
        answers = []
        for i, (q, p) in enumerate(zip(body.query, body.prompts)):
            # OpenRLHF decodes left-padded sequences with special tokens kept: drop the padding.
            q, p = _strip_pad(q, pad), _strip_pad(p, pad)
            if not q.startswith(p):
                raise ApiError(400, f"query[{i}] does not start with prompts[{i}]", "query")
            answers.append(q[len(p) :])
        prompts = [_strip_pad(p, pad) for p in body.prompts]
        scores = await _score_pairs(request, prompts, answers)
        if scores is None:
            return _client_closed()
        return {"rewards": scores, "scores": scores, "extra_logs": {"hsrm_score": scores}}

    # -- info ------------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models() -> Any:
        h = ctx.scorer.head
        return {
            "object": "list",
            "data": [
                {
                    "id": ctx.name,
                    "object": "model",
                    "created": ctx.created,
                    "owned_by": "hsrm",
                    "hsrm": {
                        "head": h.architecture,
                        "layers": list(ctx.scorer.layers),
                        "fingerprint": ctx.scorer.lm.fingerprint.to_dict(),
                    },
                }
            ],
        }

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "model": ctx.name, "queue_depth": ctx.engine.depth}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        ctx.metrics.set_queue_depth(ctx.engine.depth)
        return PlainTextResponse(
            ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app


class _AuthAndMetrics:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware would hide client disconnects from
    the handlers): the API key check, and request counts and latency by endpoint and status."""

    def __init__(self, app: Any, ctx: _Ctx):
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx, t0 = self.ctx, time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_PATHS else "other"
        status = [500]

        async def send_status(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        ctx.metrics.request_started()
        try:
            key = ctx.cfg.api_key
            if key and path not in OPEN_PATHS:
                headers = dict(scope.get("headers") or [])
                got = headers.get(b"authorization", b"")
                if not hmac.compare_digest(got, f"Bearer {key}".encode()):
                    err = ApiError(
                        401,
                        "missing or incorrect API key (send 'Authorization: Bearer KEY')",
                        type="authentication_error",
                        code="invalid_api_key",
                    )
                    await err.response()(scope, receive, send_status)
                    return
            await self.app(scope, receive, send_status)
        finally:
            ctx.metrics.request_done(endpoint, status[0], time.perf_counter() - t0)


def _strip_pad(s: str, pad: str) -> str:
    if not pad:
        return s
    while s.startswith(pad):
        s = s[len(pad) :]
    while s.endswith(pad):
        s = s[: -len(pad)]
    return s
