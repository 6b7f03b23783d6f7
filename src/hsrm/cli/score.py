"""``hsrm score``: teacher-forced head scores for completions in a JSONL file."""

from __future__ import annotations

import argparse
import json
import sys

from hsrm.config import add_arguments, from_sources, load_yaml


def _cmd_score(args: argparse.Namespace) -> int:
    from hsrm.score import ScoreConfig, score
    from hsrm.scoring import store_scores_path

    cfg = from_sources(ScoreConfig, load_yaml(args.config, "score"), args)
    rows = score(cfg)
    if cfg.store:
        out = cfg.out or store_scores_path(cfg.store, cfg.head)
        sys.stderr.write(f"scored {len(rows)} answers of {cfg.store}; wrote {out}\n")
    elif cfg.out:
        sys.stderr.write(f"scored {len(rows)} completions; wrote {cfg.out}\n")
    else:
        for r in rows:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
    return 0


def register(sub, groups) -> None:
    from hsrm.score import ScoreConfig

    p = sub.add_parser(
        "score",
        help="score completions (JSONL: prompt or messages + completion) or a store with a saved head",
    )
    p.add_argument("--config", help="YAML file with the same fields (flags override it)")
    add_arguments(p, ScoreConfig)
    p.set_defaults(func=_cmd_score)
