"""``ServeConfig``: every ``hsrm serve`` flag, also readable from ``--config serve.yaml``."""

from __future__ import annotations

from dataclasses import dataclass

from hsrm.config import field
from hsrm.errors import HsrmError
from hsrm.models import ModelConfig


@dataclass
class ServeConfig(ModelConfig):
    """An OpenAI-compatible best-of-N server that ranks samples with a head (the model fields are
    ``ModelConfig``'s; the head must be fit on the model).

    Defaults: ``best_of`` 16 draws per prompt (the N at which hidden-state heads are usually
    reported, e.g. SWIFT, arXiv 2505.12225); ``max_tokens`` 16 when a request gives none (OpenAI's
    completions default); loopback only unless ``host`` says otherwise.
    """

    head: str = field("", "saved head folder (required)")
    host: str = field("127.0.0.1", "address to bind (0.0.0.0 exposes the server)")
    port: int = field(8000, "TCP port")
    api_key: str | None = field(
        None, "require 'Authorization: Bearer KEY' (not on /health, /metrics)"
    )
    served_model_name: str | None = field(None, "model id in the API (default: --model)")
    best_of: int = field(16, "samples drawn per prompt when a request gives no best_of")
    max_best_of: int = field(64, "largest best_of (and n) a request may ask for")
    default_max_tokens: int = field(16, "max_tokens when a request gives none")
    max_tokens: int = field(512, "largest max_tokens a request may ask for")
    max_prompt_tokens: int = field(2048, "longest prompt, in tokens (every endpoint)")
    max_score_tokens: int = field(
        512, "longest completion /v1/score and /get_reward score, in tokens"
    )
    max_request_bytes: int = field(
        4 * 1024 * 1024, "largest request body, in bytes, refused with 413 before it is parsed"
    )
    max_prompts: int = field(16, "most prompts in one /v1/completions request")
    max_score_items: int = field(512, "most completions in one /v1/score or /get_reward request")
    max_queue: int = field(64, "requests waiting for the model beyond which the server answers 429")
    max_batch: int = field(8, "most prompts sampled together in one micro-batch")
    batch_wait_ms: float = field(2.0, "how long the engine waits to gather a micro-batch")
    log_level: str = field("info", "uvicorn log level")

    def validate(self) -> None:
        if not self.head:
            raise HsrmError("serve: --head HEAD/ is required")
        for name in ("best_of", "max_best_of", "default_max_tokens", "max_tokens", "max_batch"):
            if getattr(self, name) < 1:
                raise HsrmError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "max_prompt_tokens",
            "max_score_tokens",
            "max_request_bytes",
            "max_prompts",
            "max_score_items",
        ):
            if getattr(self, name) < 1:
                raise HsrmError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise HsrmError(f"serve: max_queue must be >= 0, got {self.max_queue}")
        if self.best_of > self.max_best_of:
            raise HsrmError(f"serve: best_of {self.best_of} exceeds max_best_of {self.max_best_of}")
        if self.default_max_tokens > self.max_tokens:
            raise HsrmError(
                f"serve: default_max_tokens {self.default_max_tokens} exceeds max_tokens "
                f"{self.max_tokens}"
            )
        if not 0 <= self.port <= 65535:
            raise HsrmError(f"serve: port must be in 0..65535, got {self.port}")
        if self.batch_wait_ms < 0:
            raise HsrmError(f"serve: batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
