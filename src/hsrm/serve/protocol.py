"""The server's wire format: OpenAI's request and response schemas (completions, chat), the reward
endpoints', and OpenAI's error shape. Unknown request fields are ignored, as vLLM does.

Every string a request carries is checked here, before anything tokenises it: JSON can spell a
lone UTF-16 surrogate (``"\\ud800"``), which Python keeps in a ``str`` but no tokenizer can encode.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.responses import Response

from hsrm.capture import Answer

#: pydantic error type of a string no tokenizer can encode (answered 400, not 422).
INVALID_TEXT = "invalid_text"


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

    def response(self) -> Response:
        body = ErrorResponse(
            error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        )
        # json.dumps escapes to ASCII: a message that quotes a request (a path, a model name)
        # cannot make the error itself unencodable.
        return Response(
            json.dumps(body.model_dump()),
            status_code=self.status,
            headers=self.headers,
            media_type="application/json",
        )


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# -- requests --------------------------------------------------------------------------------------
def _bad_text(value: Any) -> int | None:
    """Index of the first lone surrogate in any string of ``value`` (walked without recursion: a
    body may nest as deep as the JSON parser allows), or None."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as e:
                    return e.start
        elif isinstance(v, dict):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, list | tuple):
            todo.extend(v)
    return None


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _valid_text(cls, v: Any) -> Any:
        if _bad_text(v) is not None:
            raise PydanticCustomError(
                INVALID_TEXT,
                "the text holds a lone UTF-16 surrogate, which is not a character; "
                "send valid Unicode",
            )
        return v


class SamplingRequest(_Req):
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


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool | None = False


class ContentPart(_Req):
    """A part of a chat message's content; only text parts are read."""

    type: str = "text"
    text: str | None = None


class ChatMessage(_Req):
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content)
        return self.content or ""


class ChatRequest(SamplingRequest):
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
    """OpenRLHF's remote reward request."""

    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: Any = None


# -- responses -------------------------------------------------------------------------------------
class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class HsrmInfo(BaseModel):
    """hsrm's extension on every choice: the head's score and its rank among all best_of."""

    score: float
    rank: int


def _token_str(tok: Any, tid: int) -> str:
    return tok.decode([tid], skip_special_tokens=False)


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]

    @classmethod
    def of(cls, tok: Any, a: Answer, k: int) -> CompletionLogprobs:
        """An answer's log-probs (and its ``k`` most likely tokens' at each step)."""
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
        return cls(
            tokens=tokens,
            token_logprobs=[float(x) for x in a.logprobs],
            top_logprobs=top,
            text_offset=offsets,
        )


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str
    hsrm: HsrmInfo


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]

    @classmethod
    def of(cls, tok: Any, a: Answer, k: int) -> ChatLogprobs:
        """An answer's log-probs (and its ``k`` most likely tokens' at each step)."""
        content = []
        for j, tid in enumerate(a.token_ids):
            t = _token_str(tok, tid)
            tops = []
            if k:
                tv, ti = a.extra["top_logprobs"][j], a.extra["top_ids"][j]
                for v, i in zip(tv, ti):
                    ts = _token_str(tok, int(i))
                    tops.append(TopLogprob(token=ts, logprob=float(v), bytes=list(ts.encode())))
            content.append(
                TokenLogprob(
                    token=t, logprob=float(a.logprobs[j]), bytes=list(t.encode()), top_logprobs=tops
                )
            )
        return cls(content=content)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str
    hsrm: HsrmInfo


class ChatStreamChoice(BaseModel):
    index: int
    delta: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str
    hsrm: HsrmInfo


class _Reply(BaseModel):
    id: str
    object: str
    created: int
    model: str


class CompletionResponse(_Reply):
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None  # None only on a stream's choice chunks


class ChatCompletionResponse(_Reply):
    choices: list[ChatChoice] | list[ChatStreamChoice]
    usage: UsageInfo | None = None  # None only on a stream's choice chunks


class ScoreResponse(BaseModel):
    object: str = "list"
    model: str
    scores: list[float]


class RewardResponse(BaseModel):
    """OpenRLHF reads ``rewards`` (older releases ``scores``) and logs ``extra_logs``."""

    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class ModelInfo(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "hsrm"
    hsrm: dict[str, Any]


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelInfo]


class Health(BaseModel):
    status: str = "ok"
    model: str
    queue_depth: int
