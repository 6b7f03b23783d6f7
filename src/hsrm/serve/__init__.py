"""``hsrm serve``: an OpenAI-compatible best-of-N server that ranks samples with a head, plus
reward endpoints (``/v1/score``, OpenRLHF's ``/get_reward``). See docs/serve.md.

Needs the ``serve`` extra (``pip install 'hsrm[serve]'``: fastapi, uvicorn).
"""

from __future__ import annotations

import logging
from typing import Any

from hsrm.errors import HsrmError
from hsrm.serve.config import ServeConfig

log = logging.getLogger(__name__)


def _need_deps() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise HsrmError(
            f"hsrm serve needs the 'serve' extra ({e.name} is missing): pip install 'hsrm[serve]'"
        ) from None


def create_app(cfg: ServeConfig, lm: Any = None, head: Any = None):
    """The FastAPI app (see ``hsrm.serve.app.create_app``)."""
    _need_deps()
    from hsrm.serve.app import create_app as _create

    return _create(cfg, lm, head)


def serve(cfg: ServeConfig, lm: Any = None) -> None:
    """Load the model and head, refuse a head fit on another model, and serve until SIGINT or
    SIGTERM (in-flight requests finish first)."""
    import torch

    cfg.validate()
    _need_deps()
    import uvicorn

    from hsrm.heads.base import Head

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    head = Head.load(cfg.head)
    if lm is None:
        from hsrm.models import load_model

        lm = load_model(cfg)
    from hsrm.scoring import check_head_matches

    check_head_matches(lm, head, cfg.head)
    app = create_app(cfg, lm, head)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)


__all__ = ["ServeConfig", "create_app", "serve"]
