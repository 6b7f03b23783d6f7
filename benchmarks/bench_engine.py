"""The sampling engine: batched capture across prompts vs the one-prompt loop it replaced.

CPU, embedded model (default): samples/s of the demo task (synthetic arith+compare, N=16, 6 new
tokens, all 31 hidden states) for
  * ``legacy``: the one-prompt loop ``hsrm`` used before (one prompt's N samples per batch, a host
    copy and a host sync every step; kept below verbatim in spirit as ``legacy_sample_prompt``),
  * ``batched B=1``: today's engine one prompt at a time, and ``batched B=8/16``: B prompts x N,
each with and without capture, run alternately in one process (repeats, median) so the ratio is
fair on a machine shared with other jobs; plus the background writer's overlap (the share of
wall time the sampler waited for the disk) in a real ``hsrm sample`` run.

Model shapes (``--shape llama-3.2-1b|llama-3.1-8b|tiny --random-weights --device cuda``): a
random-init Llama of that shape in bf16 on the device (no download; the embedded SmolLM2 tokenizer,
ids beyond its vocabulary decode to nothing), tokens/s with and without capture for the batched
engine at 16..1024 rows, the one-prompt engine and HF ``generate``; bytes per token per storage
mode at that shape. ``--shape tiny --device cpu`` checks the path on a CPU.

    PYTHONPATH=src python benchmarks/bench_engine.py                       # CPU, embedded model
    PYTHONPATH=src python benchmarks/bench_engine.py --shape llama-3.1-8b --random-weights --device cuda

Writes benchmarks/results/engine[_SHAPE].json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from hsrm import lm as lmx
from hsrm.capture import (
    Answer,
    PromptResult,
    SampleConfig,
    _prompt_generator,
    parse_layers,
    sample_prompts,
    token_stats,
)
from hsrm.io import atomic_write_json, atomic_write_text
from hsrm.models import LoadedModel, fingerprint_of, load_model
from hsrm.projection import bytes_per_token
from hsrm.tasks import get_task

RESULTS = Path(__file__).parent / "results"

SHAPES: dict[str, dict[str, int]] = {
    # Llama-3.2-1B / Llama-3.1-8B configs (vocab replaced by the embedded tokenizer's, see above)
    "llama-3.2-1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8,
    ),
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# the loop hsrm used before batching (one prompt, per-step host copy and sync), for the ratio
@torch.inference_mode()
def legacy_sample_prompt(lm: LoadedModel, prompt, cfg: SampleConfig, layers, capture=True):
    model, tok = lm.model, lm.tokenizer
    device = lm.device
    decoder, head, softcap = lmx.lm_parts(model)
    eos = set(lmx.eos_ids(lm))
    g = _prompt_generator(cfg.seed, prompt.id, device)
    ids = torch.tensor([lmx.prompt_ids(tok, prompt)], device=device)
    cache = lmx.new_cache(lm)
    ckw = lmx.cache_kw(decoder, cache)
    tap = lmx.PrenormTap(decoder, layers if capture else (), lm.fingerprint.n_layers)
    try:
        out = decoder(input_ids=ids, use_cache=True, output_hidden_states=capture, **ckw)
        hs = tap.states(out.hidden_states) if capture else None
        prompt_hidden = torch.stack([hs[i][0, -1] for i in layers]).float().cpu() if hs else None
        logits = lmx.head_logits(head, softcap, out.last_hidden_state[:, -1]).expand(cfg.n, -1)
        cache.batch_repeat_interleave(cfg.n)
        pos, n = ids.shape[1], cfg.n
        tokens, lps, stats, states = [], [], [], []
        alive = torch.ones(n, dtype=torch.bool, device=device)
        lengths = torch.zeros(n, dtype=torch.long, device=device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos))
        eos_t = torch.tensor(sorted(eos), device=device)
        for step in range(cfg.max_new_tokens):
            logp = torch.log_softmax(logits, dim=-1)
            probs = torch.softmax(logits / cfg.temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=g).squeeze(-1)
            nxt = torch.where(alive, nxt, torch.full_like(nxt, pad))
            tokens.append(nxt)
            lps.append(logp.gather(-1, nxt[:, None]).squeeze(-1))
            stats.append(token_stats(logp))
            ended = alive & torch.isin(nxt, eos_t)
            lengths += (alive & ~ended).long()
            alive = alive & ~ended
            last = step == cfg.max_new_tokens - 1
            if not bool(alive.any()) or (last and not capture):
                break
            out = decoder(
                input_ids=nxt[:, None], use_cache=True, output_hidden_states=capture,
                position_ids=torch.full((n, 1), pos, device=device), **ckw,
            )  # fmt: skip
            pos += 1
            if capture:
                hs = tap.states(out.hidden_states)
                states.append(
                    torch.stack([hs[i][:, -1] for i in layers], 1).to("cpu", torch.float32)
                )
            if last:
                break
            logits = lmx.head_logits(head, softcap, out.last_hidden_state[:, -1])
    finally:
        tap.close()
    tok_mat, lp_mat = torch.stack(tokens, 1).cpu(), torch.stack(lps, 1).cpu()
    st = torch.stack(states, 1) if states else None
    answers = []
    for i in range(n):
        t = int(lengths[i])
        tid = tok_mat[i, :t].tolist()
        answers.append(
            Answer(
                token_ids=tid, text=tok.decode(tid, skip_special_tokens=True),
                hidden=st[i, :t].clone() if st is not None else None,
                logprobs=lp_mat[i, :t].clone(), entropy=lp_mat[i, :t].clone(),
            )
        )  # fmt: skip
    return PromptResult(prompt=prompt, answers=answers, prompt_hidden=prompt_hidden)


# ----------------------------------------------------------------------------------------------
def random_llama(shape: str, device: str, dtype: str) -> LoadedModel:
    """A random-init Llama of a real model's shape, built on the device (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    emb = load_model(device="cpu")  # only for its tokenizer
    tok = emb.tokenizer
    cfg = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **SHAPES[shape],
    )
    td = lmx.resolve_dtype(dtype, device)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(td).eval()
    return LoadedModel(model, tok, fingerprint_of(model, f"random-{shape}", "random"))


def _sync(lm: LoadedModel) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize()


def time_engine(lm, prompts, cfg, layers, capture, batch, legacy=False) -> tuple[float, int]:
    """Seconds and generated tokens for sampling ``prompts`` (``batch`` prompts per call)."""
    _sync(lm)
    t0 = time.perf_counter()
    n_tok = 0
    for c in range(0, len(prompts), batch):
        chunk = prompts[c : c + batch]
        if legacy:
            res = [legacy_sample_prompt(lm, p, cfg, layers, capture) for p in chunk]
        else:
            res = sample_prompts(lm, chunk, cfg, layers, capture)
        n_tok += sum(len(a.token_ids) for r in res for a in r.answers)
    _sync(lm)
    return time.perf_counter() - t0, n_tok


def time_generate(lm, prompts, cfg, batch) -> tuple[float, int]:
    """HF ``generate`` (no states), left-padded prompts, ``cfg.n`` return sequences each."""
    tok = lm.tokenizer
    _sync(lm)
    t0 = time.perf_counter()
    n_tok = 0
    for c in range(0, len(prompts), batch):
        seqs = [lmx.prompt_ids(tok, p) for p in prompts[c : c + batch]]
        ids, mask, _ = lmx.pad(seqs, lmx.pad_id(lm), "left", lm.device)
        out = lm.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=cfg.temperature,
            top_k=0, max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.n,
            pad_token_id=lmx.pad_id(lm),
        )  # fmt: skip
        n_tok += int((out[:, ids.shape[1] :] != lmx.pad_id(lm)).sum())
    _sync(lm)
    return time.perf_counter() - t0, n_tok


def cpu_bench(args) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    lm = load_model(device="cpu")
    prompts = get_task("synthetic", n=args.prompts, families="arith,compare", seed=0).prompts()
    cfg = SampleConfig(n=16, max_new_tokens=6, temperature=0.8, seed=0)
    layers = parse_layers("all", lm.fingerprint.n_layers)
    variants = {
        "legacy one-prompt, capture": dict(capture=True, batch=1, legacy=True),
        "batched B=8, capture": dict(capture=True, batch=8),
        "batched B=8, no capture": dict(capture=False, batch=8),
        "batched B=16, capture": dict(capture=True, batch=16),
        "batched B=16, no capture": dict(capture=False, batch=16),
    }
    time_engine(lm, prompts[:2], cfg, layers, True, 2)  # warm-up
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        for name, kw in variants.items():  # alternate, so load drifts hit every variant alike
            dt, _ = time_engine(lm, prompts, cfg, layers, **kw)
            runs[name].append(len(prompts) * cfg.n / dt)
            print(f"repeat {rep}: {name}: {runs[name][-1]:.1f} samples/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}

    # capture overhead: per repeat ratio no-capture/capture samples/s, median
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(runs[a], runs[b]))

    writer = writer_bench(lm, args)
    return {
        "machine": "this 2-core CPU box, shared with other jobs while measuring",
        "model": lm.fingerprint.to_dict(),
        "threads": args.threads,
        "task": f"synthetic arith+compare, {len(prompts)} prompts x N=16, 6 new tokens, 31 layers",
        "repeats": args.repeats,
        "samples_per_s": med,
        "samples_per_s_runs": runs,
        "speedup_batched_B8_vs_legacy_capture": ratio("batched B=8, capture", "legacy one-prompt, capture"),
        "speedup_batched_B16_vs_legacy_capture": ratio("batched B=16, capture", "legacy one-prompt, capture"),
        "capture_overhead_B8": ratio("batched B=8, no capture", "batched B=8, capture"),
        "capture_overhead_B16": ratio("batched B=16, no capture", "batched B=16, capture"),
        "writer": writer,
        "reference": "17.6 samples/s: today's one-prompt loop in benchmarks/results/bon_speed.md",
    }  # fmt: skip


def writer_bench(lm, args) -> dict[str, Any]:
    """A real ``hsrm sample`` run with the background writer and with synchronous writes: the
    share of wall time the sampler waited for the writer."""
    import shutil
    import tempfile

    from hsrm.sampling import SampleRunConfig, sample
    from hsrm.store import Store

    out: dict[str, Any] = {}
    for q in (2, 0):
        d = Path(tempfile.mkdtemp(prefix="hsrm-writer-"))
        try:
            t0 = time.perf_counter()
            sample(
                SampleRunConfig(
                    out=str(d), n_prompts=args.prompts, shard_prompts=8, writer_queue=q
                ),
                lm,
                progress=False,
            )
            wall = time.perf_counter() - t0
            last = Store(d).meta["last_run"]
            out[f"writer_queue={q}"] = {
                "wall_s": wall,
                "sampler_waited_s": last["writer_wait_s"],
                "idle_share": last["writer_wait_s"] / wall,
            }
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


def shape_bench(args) -> dict[str, Any]:
    device = lmx.resolve_device(args.device)
    if device != "cpu":
        torch.set_num_threads(max(1, args.threads))
    else:
        torch.set_num_threads(args.threads)
    lm = random_llama(args.shape, device, args.dtype)
    fp = lm.fingerprint
    cfg = SampleConfig(n=16, max_new_tokens=args.new_tokens, temperature=1.0, seed=0)
    layers = parse_layers("all", fp.n_layers)
    rows = []
    for R in args.rows:
        B = max(1, R // cfg.n)
        prompts = get_task("synthetic", n=B, families="arith,compare", seed=1).prompts()
        time_engine(lm, prompts[:1], cfg, layers, True, 1)  # warm-up
        row: dict[str, Any] = {"rows": B * cfg.n, "prompts": B}
        for name, kw in {
            "batched, capture": dict(capture=True, batch=B),
            "batched, no capture": dict(capture=False, batch=B),
            "one-prompt, capture": dict(capture=True, batch=1),
        }.items():
            if name.startswith("one-prompt") and B > args.one_prompt_max:
                continue
            dt, n_tok = time_engine(lm, prompts, cfg, layers, **kw)
            row[name] = {"s": dt, "tokens": n_tok, "tokens_per_s": n_tok / dt}
        dt, n_tok = time_generate(lm, prompts, cfg, B)
        row["HF generate, no states"] = {"s": dt, "tokens": n_tok, "tokens_per_s": n_tok / dt}
        row["capture_overhead"] = row["batched, capture"]["s"] / row["batched, no capture"]["s"]
        rows.append(row)
        print(row, flush=True)
    L = fp.n_layers + 1
    storage = {
        f"{m} {dt}": bytes_per_token(L, fp.hidden_size, dt, k)
        for m, k in (("full", 0), ("proj k=256", 256), ("proj k=128", 128), ("proj k=64", 64))
        for dt in ("float16", "int8")
    }
    dev_name = (
        torch.cuda.get_device_name() if device.startswith("cuda") else "CPU (this 2-core box)"
    )
    return {
        "shape": args.shape,
        "device": dev_name,
        "dtype": args.dtype,
        "fingerprint": fp.to_dict(),
        "new_tokens": args.new_tokens,
        "rows": rows,
        "bytes_per_token_all_layers": storage,
    }


def _md_cpu(r: dict[str, Any]) -> str:
    lines = [
        f"# Sampling engine, CPU ({r['machine']})",
        "",
        f"{r['task']}; {r['threads']} torch thread(s); median of {r['repeats']} alternating repeats.",
        "",
        "| variant | samples/s |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["samples_per_s"].items()]
    lines += [
        "",
        "| ratio | value |",
        "|---|---|",
        f"| batched B=8 vs legacy one-prompt, with capture | {r['speedup_batched_B8_vs_legacy_capture']:.2f}x |",
        f"| batched B=16 vs legacy one-prompt, with capture | {r['speedup_batched_B16_vs_legacy_capture']:.2f}x |",
        f"| capture overhead, batched B=8 | {r['capture_overhead_B8']:.3f}x |",
        f"| capture overhead, batched B=16 | {r['capture_overhead_B16']:.3f}x |",
        "",
        "| writer | wall s | sampler waited s | idle share |",
        "|---|---|---|---|",
    ]
    for k, v in r["writer"].items():
        lines.append(
            f"| {k} | {v['wall_s']:.1f} | {v['sampler_waited_s']:.2f} | {100 * v['idle_share']:.1f}% |"
        )
    lines += ["", f"Reference: {r['reference']}.", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def _md_shape(r: dict[str, Any]) -> str:
    lines = [
        f"# Sampling engine, random-weight {r['shape']} shape on {r['device']} ({r['dtype']}, "
        f"{r['new_tokens']} new tokens, all {r['fingerprint']['n_layers'] + 1} layers captured)",
        "",
        "| rows | batched+capture tok/s | batched no capture tok/s | capture overhead | "
        "one-prompt+capture tok/s | HF generate tok/s |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        one = row.get("one-prompt, capture", {}).get("tokens_per_s")
        lines.append(
            f"| {row['rows']} | {row['batched, capture']['tokens_per_s']:.0f} | "
            f"{row['batched, no capture']['tokens_per_s']:.0f} | {row['capture_overhead']:.3f}x | "
            f"{'' if one is None else f'{one:.0f}'} | {row['HF generate, no states']['tokens_per_s']:.0f} |"
        )
    lines += ["", "| storage mode (all layers) | bytes per token |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in r["bytes_per_token_all_layers"].items()]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None)
    ap.add_argument("--random-weights", action="store_true", help="required with --shape")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="bfloat16", help="model dtype for --shape")
    ap.add_argument("--rows", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument(
        "--one-prompt-max", type=int, default=16, help="prompts for the one-prompt loop"
    )
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import sys

    cmd = "PYTHONPATH=src python benchmarks/bench_engine.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    if args.shape:
        if not args.random_weights:
            ap.error("--shape needs --random-weights (no weights are downloaded)")
        r = shape_bench(args)
        r["command"] = cmd.strip()
        name = args.out or f"engine_{args.shape}_{'cuda' if 'cuda' in args.device else 'cpu'}"
        md = _md_shape(r)
    else:
        r = cpu_bench(args)
        r["command"] = cmd.strip()
        name = args.out or "engine"
        md = _md_cpu(r)
    atomic_write_json(RESULTS / f"{name}.json", r)
    atomic_write_text(RESULTS / f"{name}.md", md)
    print(md)


if __name__ == "__main__":
    main()
