"""The FastAPI app: OpenAI's completions and chat, reward endpoints, health and metrics.

Routes live on ``router`` and read the server's state (``ServerState``: config, scorer, engine,
metrics) from ``app.state.ctx``; ``create_app`` builds that state and wires the router, the error
handlers and the middleware (``hsrm.serve.middleware``). The schemas are in
``hsrm.serve.protocol``.

``best_of`` keeps OpenAI's meaning ("draw best_of, return the n best") with the head's score in
place of the log-probability; each returned choice carries ``"hsrm": {"score", "rank"}`` (rank 1
is the best of all best_of samples) and ``usage.completion_tokens`` counts every generated token.

Nothing that can take long runs on the event loop: prompts and completions are tokenised (and
their token limits checked) in a worker thread, sampling and scoring on the engine's thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from hsrm.capture import SampleConfig
from hsrm.errors import HsrmError
from hsrm.lm import encode as _encode
from hsrm.lm import prompt_text
from hsrm.scoring import Scorer, as_messages
from hsrm.serve.config import ServeConfig
from hsrm.serve.engine import Engine, QueueFull, Sample
from hsrm.serve.metrics import Metrics
from hsrm.serve.middleware import Gate, add_error_handlers
from hsrm.serve.protocol import (
    ApiError,
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    ChatRequest,
    ChatStreamChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Health,
    HsrmInfo,
    ModelInfo,
    ModelList,
    RewardRequest,
    RewardResponse,
    SamplingRequest,
    ScoreRequest,
    ScoreResponse,
    UsageInfo,
)
from hsrm.tasks.base import Prompt

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs
MAX_STOP = 4  # OpenAI's limit for stop sequences
DISCONNECT_POLL_S = 0.2


# -- shared state --------------------------------------------------------------------------------
class ServerState:
    """What the routes share: config, scorer, engine, metrics (``app.state.ctx``)."""

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

    @property
    def tokenizer(self) -> Any:
        return self.scorer.lm.tokenizer

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(
                404,
                f"The model '{model}' does not exist; this server serves '{self.name}'",
                "model",
                code="model_not_found",
            )

    def sampling(
        self, body: SamplingRequest, max_tokens: int | None, top_logprobs: int
    ) -> SampleConfig:
        """The request's sampling settings, each checked against OpenAI's and this server's limits."""
        c, stream = self.cfg, bool(body.stream)
        n = 1 if body.n is None else body.n
        if n < 1:
            raise ApiError(400, f"n must be >= 1, got {n}", "n")
        best_of = body.best_of
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
        t = 1.0 if body.temperature is None else body.temperature
        if not 0 <= t <= 2:
            raise ApiError(400, f"temperature must be in [0, 2], got {t}", "temperature")
        p = 1.0 if body.top_p is None else body.top_p
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
            seed=0,  # the per-request seed goes into the prompt ids (see sample_and_rank)
            top_logprobs=top_logprobs,
            stop=_stop_list(body.stop),  # capture cuts the text and ends the answer early
        )

    # -- token limits (worker threads: a long text takes seconds to tokenise) ---------------------
    def _limit(self, k: int, limit: int, what: str, param: str, flag: str) -> int:
        if k > limit:
            raise ApiError(
                400,
                f"{what} has {k} tokens; this server accepts at most {limit} ({flag})",
                param,
                code="context_length_exceeded",
            )
        return k

    def prompt_tokens(self, prompt: Prompt | str | tuple[dict[str, str], ...]) -> int:
        """Tokens of a prompt as the model reads it (chat template applied to messages)."""
        if isinstance(prompt, str):
            text = prompt
        else:
            p = prompt if isinstance(prompt, Prompt) else Prompt(id="", messages=prompt, answer="")
            try:
                text = prompt_text(self.tokenizer, p)
            except Exception as e:  # noqa: BLE001  (a template may refuse roles or their order)
                raise ApiError(
                    400, f"messages: the chat template cannot render them: {e}", "messages"
                ) from None
        k = len(_encode(self.tokenizer, text))
        return self._limit(
            k, self.cfg.max_prompt_tokens, "the prompt", "prompt", "--max-prompt-tokens"
        )

    def score_inputs(self, prompts: Sequence[Any], completions: Sequence[str]) -> list[list[int]]:
        """Check each distinct prompt and every completion against the token limits; the
        completions' token ids (what ``Scorer.score_pairs`` would compute from the text)."""
        # /v1/score repeats one prompt (text or one messages object) for every completion
        for p in {p if isinstance(p, str) else id(p): p for p in prompts}.values():
            self.prompt_tokens(p)
        ids = []
        for i, c in enumerate(completions):
            got = self.scorer.completion_ids(c)
            self._limit(
                len(got), self.cfg.max_score_tokens, f"completions[{i}]", "completions",
                "--max-score-tokens",
            )  # fmt: skip
            ids.append(got)
        return ids

    # -- running jobs ---------------------------------------------------------------------------
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


def _state(request: Request) -> ServerState:
    return request.app.state.ctx


#: A route's parameter that FastAPI fills with the server's state.
State = Annotated[ServerState, Depends(_state)]


def _messages(msgs: list[ChatMessage]) -> tuple[dict[str, str], ...]:
    try:
        return as_messages([{"role": m.role, "content": m.text()} for m in msgs])
    except HsrmError as e:
        raise ApiError(400, str(e), "messages") from None


def _stop_list(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"stop: at most {MAX_STOP} sequences, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise ApiError(400, "stop: sequences must be non-empty", "stop")
    return tuple(stops)


# -- sampling and ranking, for both generation endpoints -------------------------------------------
@dataclass
class Ranked:
    """Per prompt, its ``n`` best samples as (rank, sample), best first; the request's usage."""

    groups: list[list[tuple[int, Sample]]]
    usage: UsageInfo


async def sample_and_rank(
    ctx: ServerState,
    request: Request,
    body: SamplingRequest,
    prompts: list[tuple[tuple[dict[str, str], ...], str]],
    max_tokens: int | None,
    top_logprobs: int,
) -> Ranked | None:
    """Validate the sampling settings, tokenise the prompts (messages, prefill) off the event loop
    (refusing any over the token limit), sample ``best_of`` answers to each on the engine, and
    rank them by head score. None if the client left."""
    scfg = ctx.sampling(body, max_tokens, top_logprobs)
    seed = secrets.randbits(62) if body.seed is None else int(body.seed)
    ps = [
        Prompt(id=f"{seed}:{i}", messages=m, answer="", prefill=pre)
        for i, (m, pre) in enumerate(prompts)
    ]
    n_prompt = sum(await asyncio.to_thread(lambda: [ctx.prompt_tokens(p) for p in ps]))
    groups = await ctx.run(request, lambda: ctx.engine.submit_sample(ps, scfg))
    if groups is None:
        return None
    ctx.metrics.add("prompt_tokens", n_prompt)
    n = body.n or 1
    gen = sum(s.generated_tokens for g in groups for s in g)
    return Ranked(
        [_ranked(g, n) for g in groups],
        UsageInfo(prompt_tokens=n_prompt, completion_tokens=gen, total_tokens=n_prompt + gen),
    )


def _ranked(samples: list[Sample], n: int) -> list[tuple[int, Sample]]:
    """The n best samples by head score, best first, as (rank, sample); ties keep draw order."""
    order = sorted(range(len(samples)), key=lambda i: -samples[i].score)
    return [(r + 1, samples[i]) for r, i in enumerate(order[:n])]


def _sse(chunks: list[CompletionResponse | ChatCompletionResponse]) -> StreamingResponse:
    async def gen() -> AsyncIterator[str]:
        for c in chunks:
            # a choice chunk has no "usage" key; the usage chunk has no choices
            yield f"data: {c.model_dump_json(exclude={'usage'} if c.usage is None else None)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream")


def _stream(
    reply: CompletionResponse | ChatCompletionResponse, stream_options: dict[str, Any] | None
) -> StreamingResponse:
    """``reply`` streamed: one chunk per choice, then a chunk with the usage and no choices when
    ``stream_options.include_usage`` asks for it."""
    chunks = [reply.model_copy(update={"choices": [c], "usage": None}) for c in reply.choices]
    if (stream_options or {}).get("include_usage"):
        chunks.append(reply.model_copy(update={"choices": []}))
    return _sse(chunks)


def _client_closed() -> Response:
    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


# -- routes ----------------------------------------------------------------------------------------
router = APIRouter()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, ctx: State) -> Any:
    ctx.check_model(body.model)
    if body.echo:
        raise ApiError(400, "echo is not supported", "echo")
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts or len(prompts) > ctx.cfg.max_prompts:
        raise ApiError(
            400, f"prompt: give 1..{ctx.cfg.max_prompts} prompts, got {len(prompts)}", "prompt"
        )
    k = body.logprobs or 0
    got = await sample_and_rank(ctx, request, body, [((), p) for p in prompts], body.max_tokens, k)
    if got is None:
        return _client_closed()
    tok = ctx.tokenizer
    choices = [
        CompletionChoice(
            index=i,
            text=s.text,
            logprobs=CompletionLogprobs.of(tok, s.answer, k) if body.logprobs is not None else None,
            finish_reason=s.finish_reason,
            hsrm=HsrmInfo(score=s.score, rank=rank),
        )
        for i, (rank, s) in enumerate(rs for g in got.groups for rs in g)
    ]
    obj = "text_completion"
    reply = CompletionResponse(
        id=f"cmpl-{uuid.uuid4().hex}", object=obj, created=int(time.time()), model=ctx.name,
        choices=choices, usage=got.usage,
    )  # fmt: skip
    return _stream(reply, body.stream_options) if body.stream else reply


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request, ctx: State) -> Any:
    ctx.check_model(body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    k = (body.top_logprobs or 0) if body.logprobs else 0
    msgs = _messages(body.messages)
    max_tokens = body.max_completion_tokens or body.max_tokens
    got = await sample_and_rank(ctx, request, body, [(msgs, "")], max_tokens, k)
    if got is None:
        return _client_closed()
    tok = ctx.tokenizer
    choices: list[Any] = []
    for i, (rank, s) in enumerate(got.groups[0]):
        msg = AssistantMessage(content=s.text)
        lp = ChatLogprobs.of(tok, s.answer, k) if body.logprobs else None
        info = HsrmInfo(score=s.score, rank=rank)
        if body.stream:  # a stream's choice holds a "delta" where a reply's holds a "message"
            choices.append(
                ChatStreamChoice(
                    index=i, delta=msg, logprobs=lp, finish_reason=s.finish_reason, hsrm=info
                )
            )
        else:
            choices.append(
                ChatChoice(
                    index=i, message=msg, logprobs=lp, finish_reason=s.finish_reason, hsrm=info
                )
            )
    reply = ChatCompletionResponse(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        object="chat.completion.chunk" if body.stream else "chat.completion",
        created=int(time.time()),
        model=ctx.name,
        choices=choices,
        usage=got.usage,
    )
    return _stream(reply, body.stream_options) if body.stream else reply


async def _score(
    ctx: ServerState, request: Request, prompts: list[Any], completions: list[str]
) -> list[float] | None:
    """Teacher-forced head scores, after the token limits (checked off the event loop)."""
    if len(completions) > ctx.cfg.max_score_items:
        raise ApiError(
            400,
            f"at most {ctx.cfg.max_score_items} completions per request, got {len(completions)}",
        )
    ids = await asyncio.to_thread(ctx.score_inputs, prompts, completions)
    return await ctx.run(
        request, lambda: ctx.engine.submit_call(lambda: ctx.scorer.score_pairs(prompts, ids))
    )


@router.post("/v1/score")
async def score(body: ScoreRequest, request: Request, ctx: State) -> Any:
    ctx.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "give exactly one of 'prompt' (text) or 'messages'", "prompt")
    prompt: Any = body.prompt if body.prompt is not None else _messages(body.messages or [])
    scores = await _score(ctx, request, [prompt] * len(body.completions), body.completions)
    if scores is None:
        return _client_closed()
    return ScoreResponse(model=ctx.name, scores=scores)


@router.post("/get_reward")
async def get_reward(body: RewardRequest, request: Request, ctx: State) -> Any:
    if body.prompts is None:
        raise ApiError(
            400, "'prompts' is required: it tells where each answer starts in its query", "prompts"
        )
    if len(body.prompts) != len(body.query):
        raise ApiError(400, f"{len(body.query)} queries but {len(body.prompts)} prompts", "prompts")
    pad = ctx.tokenizer.pad_token or ""
    prompts, answers = [], []
    for i, (q, p) in enumerate(zip(body.query, body.prompts)):
        # OpenRLHF decodes left-padded sequences with special tokens kept: drop the padding.
        q, p = _strip_pad(q, pad), _strip_pad(p, pad)
        if not q.startswith(p):
            raise ApiError(400, f"query[{i}] does not start with prompts[{i}]", "query")
        prompts.append(p)
        answers.append(q[len(p) :])
    scores = await _score(ctx, request, prompts, answers)
    if scores is None:
        return _client_closed()
    return RewardResponse(rewards=scores, scores=scores, extra_logs={"hsrm_score": scores})


@router.get("/v1/models")
async def models(ctx: State) -> Any:
    info = {
        "head": ctx.scorer.head.architecture,
        "layers": list(ctx.scorer.layers),
        "fingerprint": ctx.scorer.lm.fingerprint.to_dict(),
    }
    return ModelList(data=[ModelInfo(id=ctx.name, created=ctx.created, hsrm=info)])


@router.get("/health")
async def health(ctx: State) -> Any:
    return Health(model=ctx.name, queue_depth=ctx.engine.depth)


@router.get("/metrics")
async def metrics(ctx: State) -> PlainTextResponse:
    ctx.metrics.set_queue_depth(ctx.engine.depth)
    return PlainTextResponse(
        ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


def _strip_pad(s: str, pad: str) -> str:
    if not pad:
        return s
    while s.startswith(pad):
        s = s[len(pad) :]
    while s.endswith(pad):
        s = s[: -len(pad)]
    return s


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
        lm = load_model(cfg)
    ctx = ServerState(cfg, Scorer(lm, head))  # Scorer raises HsrmError on a fingerprint mismatch

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
    add_error_handlers(app)
    app.add_middleware(Gate, ctx=ctx)
    app.include_router(router)
    return app
