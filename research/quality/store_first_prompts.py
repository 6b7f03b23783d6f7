"""A store of the first K prompts of another store, without sampling them again.

    PYTHONPATH=src .venv/bin/python research/quality/store_first_prompts.py runs/cot3_train768 \\
        runs/cot3_train384 384

Every prompt draws from its own random stream and shard k always holds prompts [k*S, (k+1)*S),
so the first K/S shards of a store are what `hsrm sample --n-prompts K` with its settings would
write. This hard-links them (no copy) and writes a meta.json whose task asks for K prompts, so a
benchmark can compare heads trained on the first K prompts with heads trained on all of them, on
the same samples (the goal-4 protocol in research/quality/HISTORY.md).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from hsrm.errors import HsrmError
from hsrm.io import atomic_write_json
from hsrm.store import Store


def first_prompts(src: Path, dst: Path, k: int) -> Store:
    s = Store(src)
    per = int(s.meta["shard_prompts"])
    if not s.complete or k % per or k > len(set(s.prompt_ids)):
        raise HsrmError(
            f"{src}: need a complete store of at least {k} prompts, {k} a multiple of its "
            f"{per} prompts per shard"
        )
    if dst.exists():
        raise HsrmError(f"{dst} exists; remove it first")
    dst.mkdir(parents=True)
    for i in range(k // per):
        for ext in ("json", "safetensors"):
            os.link(src / f"shard-{i:05d}.{ext}", dst / f"shard-{i:05d}.{ext}")
    meta = json.loads((src / "meta.json").read_text())
    meta["task"] = {**meta["task"], "n": k}
    meta["command"] = f"the first {k} prompts of {src} (research/quality/store_first_prompts.py)"
    atomic_write_json(dst / "meta.json", meta)
    return Store(dst)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("k", type=int)
    a = ap.parse_args()
    st = first_prompts(Path(a.src), Path(a.dst), a.k)
    print(f"{a.dst}: {len(st)} samples over {len(set(st.prompt_ids))} prompts")


if __name__ == "__main__":
    main()
