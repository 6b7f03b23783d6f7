"""Writing the sample store (``hsrm.store``'s layout): ``StoreWriter`` writes the shards of one run,
resumes it, and refuses a resume under other settings; ``shard_files`` proves the finished store
whole (sizes and sha256 in ``meta.json``). Reading and verifying is ``hsrm.store``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

import hsrm.config
from hsrm.capture import PromptResult
from hsrm.errors import HsrmError
from hsrm.io import (
    acquire,
    atomic_write_bytes,
    atomic_write_json,
    check_out,
    clean_stale,
    read_json,
)
from hsrm.projection import Projection

log = logging.getLogger(__name__)


FORMAT_VERSION = 1
DTYPES = ("float16", "bfloat16", "int8", "fp8")
POOLS = ("none", "mean", "last")
# Fields of meta.json that must match for a run to resume into an existing store.
_RESUME_KEYS = (
    "format_version",
    "fingerprint",
    "layers",
    "task",
    "sampling",
    "dtype",
    "pool",
    "shard_prompts",
    "projection",
    "model_dtype",
)
# Resume keys newer than some stores: checked only where the existing store records them.
_RESUME_KEYS_ADDED = ("model_dtype",)


def differing(old: Any, new: Any) -> tuple[Any, Any]:
    """Two settings cut down to where they differ (nested dicts walked; a key one side lacks is
    left out of that side), so a resume refusal shows ``sampling={'n': 4}`` against
    ``sampling={'n': 8}``, not two whole dicts to compare by eye."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old, new
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    for k in sorted(set(old) | set(new), key=str):
        if json.dumps(old.get(k), sort_keys=True) == json.dumps(new.get(k), sort_keys=True):
            continue
        x, y = differing(old.get(k), new.get(k))
        if k in old:
            a[k] = x
        if k in new:
            b[k] = y
    return a, b


def _encode_hidden(h: torch.Tensor, dtype: str) -> dict[str, torch.Tensor]:
    """h: (N, L, d) float32 -> tensors to write."""
    if dtype == "float16":
        return {"hidden": h.to(torch.float16)}
    if dtype == "bfloat16":
        return {"hidden": h.to(torch.bfloat16)}
    amax = h.abs().amax(-1, keepdim=True).clamp_min(1e-8)  # (N, L, 1)
    if dtype == "int8":
        scale = amax / 127.0
        q = torch.round(h / scale).clamp(-127, 127).to(torch.int8)
    elif dtype == "fp8":
        scale = amax / 448.0  # e4m3 max
        q = (h / scale).to(torch.float8_e4m3fn)
    else:
        raise HsrmError(f"unknown storage dtype {dtype!r}; use one of {DTYPES}")
    return {"hidden": q, "hidden_scale": scale.squeeze(-1).to(torch.float16)}


def _decode_hidden(q: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is None:
        return q.float()
    return q.float() * scale.float().unsqueeze(-1)


class StoreWriter:
    """Writes shards of prompt results; refuses to mix runs with different settings."""

    def __init__(self, path: str | Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = {"format_version": FORMAT_VERSION, **meta}
        if self.meta.get("dtype", "float16") not in DTYPES:
            raise HsrmError(f"unknown storage dtype {self.meta['dtype']!r}; use one of {DTYPES}")
        if self.meta.get("pool", "none") not in POOLS:
            raise HsrmError(f"unknown pooling {self.meta['pool']!r}; use one of {POOLS}")
        self.meta.setdefault("dtype", "float16")
        self.meta.setdefault("pool", "none")
        # A compact store keeps each layer's states projected to k dims (hsrm.projection).
        self.projection = Projection.from_dict(self.meta.get("projection"))
        if self.projection is None:
            self.meta.pop("projection", None)
        mp = self.path / "meta.json"
        check_out(self.path, "store")
        # One writer per store, held until finish()/close(): the settings check, the meta write
        # and the clean-up below happen under it, so a second writer can neither slip past the
        # check nor delete this writer's temporary files.
        self._lock: contextlib.ExitStack | None = acquire(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # Temporaries (shards, meta.json, API log parts) left by a killed writer are stale.
            clean_stale(self.path, ".*.tmp")
            if mp.exists():
                old = read_json(mp, "store meta.json")
                if not isinstance(old, dict):
                    raise HsrmError(f"{mp}: expected a JSON object (damaged store?)")
                diff = [
                    k
                    for k in _RESUME_KEYS
                    # a key newer than the store: nothing to compare
                    if not (k in _RESUME_KEYS_ADDED and k not in old)
                    and json.dumps(old.get(k), sort_keys=True)
                    != json.dumps(self.meta.get(k), sort_keys=True)
                ]
                if diff:
                    pairs = [(k, *differing(old.get(k), self.meta.get(k))) for k in diff]
                    raise HsrmError(
                        f"{mp}: existing run has "
                        + ", ".join(f"{k}={a!r}" for k, a, _ in pairs)
                        + "; this run asks for "
                        + ", ".join(f"{k}={b!r}" for k, _, b in pairs)
                        + "; use another --out or the same settings to resume"
                    )
                kept = [k for k in _RESUME_KEYS if k not in _RESUME_KEYS_ADDED or k in old]
                self.meta = {**old, **{k: self.meta[k] for k in kept if k in self.meta}}
            else:
                if hsrm.config.COMMAND:
                    self.meta.setdefault("command", shlex.join(hsrm.config.COMMAND))
                atomic_write_json(mp, {**self.meta, "complete": False})
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the store's lock (finish() does; also on garbage collection)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            self._lock = None
            lock.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the kernel frees it anyway
            self.close()

    def shard_done(self, k: int, prompt_ids: Sequence[str]) -> bool:
        j = self.path / f"shard-{k:05d}.json"
        if not j.exists() or not (self.path / f"shard-{k:05d}.safetensors").exists():
            return False
        recs = json.loads(j.read_text())["prompts"]
        return list(recs) == list(prompt_ids)

    def write_shard(
        self,
        k: int,
        results: Sequence[PromptResult],
        grades: Sequence[Sequence[tuple[Any, bool]]],
    ) -> None:
        """Write shard k. ``grades[i][s]``: (extracted answer, label) of answer s of prompt i, as
        the task judged it (``Task.grade``); the store records labels, it does not make them."""
        if [len(g) for g in grades] != [len(r.answers) for r in results]:
            raise HsrmError(f"write_shard: grades do not match the answers of shard {k}")
        dtype, pool = self.meta["dtype"], self.meta["pool"]
        hidden: list[torch.Tensor] = []
        lps: list[torch.Tensor] = []
        ents: list[torch.Tensor] = []
        certs: list[torch.Tensor] = []
        confs: list[torch.Tensor] = []
        tids: list[torch.Tensor] = []
        records: list[dict[str, Any]] = []
        prompt_hidden: list[torch.Tensor] = []
        offset = tok_offset = 0
        for r, graded in zip(results, grades):
            if r.prompt_hidden is not None:
                prompt_hidden.append(r.prompt_hidden)
            for s, a in enumerate(r.answers):
                extracted, label = graded[s][0], bool(graded[s][1])
                h = a.hidden
                if h is None:
                    raise HsrmError("write_shard needs captured hidden states")
                if pool == "mean":
                    h = h.mean(0, keepdim=True) if len(h) else h.new_zeros(1, *h.shape[1:])
                elif pool == "last":
                    h = h[-1:] if len(h) else h.new_zeros(1, *h.shape[1:])
                n_tok = int(a.logprobs.shape[0])
                records.append(
                    {
                        "prompt_id": r.prompt.id,
                        "sample": s,
                        "family": r.prompt.family,
                        "qtype": r.prompt.meta.get("qtype", r.prompt.family),
                        "question": r.prompt.question,
                        "reference": r.prompt.answer,
                        "text": a.text,
                        "extracted": extracted,
                        "label": label,
                        "n_tokens": n_tok,
                        "offset": offset,
                        "rows": int(h.shape[0]),
                        "mean_logprob": float(a.logprobs.mean()) if n_tok else 0.0,
                        "mean_entropy": float(a.entropy.mean()) if n_tok else 0.0,
                        "mean_self_certainty": float(a.self_certainty.mean())
                        if n_tok and a.self_certainty is not None
                        else 0.0,
                        "eos_logprob": a.extra.get("eos_logprob"),
                        # why decoding stopped: eos | length | stop | pruned (``--prune``)
                        "stop": a.extra.get("stop"),
                        "tok_offset": tok_offset,
                    }
                )
                offset += int(h.shape[0])
                tok_offset += n_tok
                hidden.append(h)
                lps.append(a.logprobs.float())
                ents.append(a.entropy.float())
                nan = torch.full((n_tok,), float("nan"))
                certs.append(nan if a.self_certainty is None else a.self_certainty.float())
                confs.append(nan if a.confidence is None else a.confidence.float())
                tids.append(torch.tensor(a.token_ids, dtype=torch.int32))
        L = len(self.meta["layers"])
        d = self.meta["fingerprint"]["hidden_size"]
        layers = self.meta["layers"]
        # States the sampler already projected on the device (SampleConfig.project) are stored as
        # they are; raw ones are projected here. Either way the shard holds the store's projection.
        want = self.projection.tag() if self.projection is not None else ""
        done = {r.projected for r in results}
        if done - {"", want} or len(done) > 1:
            raise HsrmError(
                f"write_shard: shard {k}'s states are projected as {sorted(done)}, the store "
                f"keeps {want or 'full states'}"
            )
        project = self.projection is not None and done != {want}
        if self.projection is not None and not project:
            d = self.projection.k
        H = torch.cat(hidden) if hidden else torch.zeros(0, L, d)
        if project:
            H = self.projection.apply(H, layers)  # type: ignore[union-attr]
        tensors = _encode_hidden(H, dtype)
        tensors["logprobs"] = torch.cat(lps) if lps else torch.zeros(0)
        tensors["entropy"] = torch.cat(ents) if ents else torch.zeros(0)
        tensors["self_certainty"] = torch.cat(certs) if certs else torch.zeros(0)
        tensors["confidence"] = torch.cat(confs) if confs else torch.zeros(0)
        tensors["token_ids"] = torch.cat(tids) if tids else torch.zeros(0, dtype=torch.int32)
        if prompt_hidden:
            ph = torch.stack(prompt_hidden)
            if project:
                ph = self.projection.apply(ph, layers)  # type: ignore[union-attr]
            tensors["prompt_hidden"] = ph.to(torch.float16)
        blob = save(tensors)
        atomic_write_bytes(self.path / f"shard-{k:05d}.safetensors", blob)
        # The index carries what its tensors must be (written in the same atomic step as the
        # records, so it holds under the background writer and Ray workers alike, which each
        # write whole shards): Store checks the counts, sizes and shapes on every open, `hsrm
        # check` the checksum.
        summary = {
            "records": len(records),
            "prompts": len(results),
            "rows": offset,
            "tokens": tok_offset,
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "shapes": {n: list(t.shape) for n, t in sorted(tensors.items())},
        }
        atomic_write_json(
            self.path / f"shard-{k:05d}.json",
            {"prompts": [r.prompt.id for r in results], "records": records, "summary": summary},
        )

    def finish(self, extra: dict[str, Any] | None = None) -> None:
        meta = {**self.meta, **(extra or {}), **shard_files(self.path), "complete": True}
        atomic_write_json(self.path / "meta.json", meta)
        self.close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def shard_files(path: Path) -> dict[str, Any]:
    """meta.json's record of a finished store: every shard file's size and sha256 (the tensors'
    from their index, which hashed them as it wrote them; the small indexes hashed here) and
    the totals, so a shard added, removed or edited afterwards is noticed."""
    files: dict[str, dict[str, Any]] = {}
    totals = {"shards": 0, "prompts": 0, "records": 0}
    for j in sorted(path.glob("shard-*.json")):
        data = read_json(j, "shard index")
        summary = data.get("summary") if isinstance(data, dict) else None
        files[j.name] = {"bytes": j.stat().st_size, "sha256": _sha256(j)}
        st = j.with_suffix(".safetensors")
        if isinstance(summary, dict) and "sha256" in summary:
            files[st.name] = {"bytes": summary["bytes"], "sha256": summary["sha256"]}
        elif st.exists():  # a shard of an older hsrm, resumed: hash it now
            files[st.name] = {"bytes": st.stat().st_size, "sha256": _sha256(st)}
        totals["shards"] += 1
        totals["prompts"] += len(data.get("prompts") or []) if isinstance(data, dict) else 0
        totals["records"] += len(data.get("records") or []) if isinstance(data, dict) else 0
    return {"files": files, "counts": totals}
