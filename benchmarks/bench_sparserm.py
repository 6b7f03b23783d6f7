"""SparseRM benchmark on TruthfulQA pairs (stage 1: feature cache)."""

from __future__ import annotations

import argparse
import logging
import time

import torch

from hsrm.models import load_model
from hsrm.prefs.data import truthfulqa_pairs
from hsrm.prefs.evaluate import encode_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/truthfulqa/TruthfulQA.csv")
    ap.add_argument("--cache", default="runs/sparserm/tqa_pairs.safetensors")
    ap.add_argument("--max-answers", type=int, default=2)
    ap.add_argument("--layers", default="every:3")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    lm = load_model()
    pairs = truthfulqa_pairs(a.data, max_answers=a.max_answers)
    ps = encode_pairs(lm, pairs, a.layers, cache=a.cache)
    logging.info("cache: %d pairs, %d answers in %.0fs", len(ps), len(ps.texts), time.time() - t0)


if __name__ == "__main__":
    main()
