"""The sample store: sharded safetensors on disk, memory-mapped on read, resumable on write.

Why safetensors rather than Arrow: the payload is dense numeric blocks (tokens x layers x d) read in
slices; safetensors maps them with zero copies, never unpickles, is what every HF checkpoint
already uses, and supports fp16, bf16, int8 and fp8 natively. The per-sample index (ids, texts,
labels) is small and lives beside each shard as JSON.

Layout of ``RUN/``::

    meta.json                 format version, model fingerprint, layers, task, sampling config
    shard-00000.safetensors   hidden (tokens, L, d), logprobs (tokens,), entropy (tokens,),
                              self_certainty (tokens,), confidence (tokens,),
                              token_ids (tokens,), prompt_hidden (prompts, L, d) [+ scales]
    shard-00000.json          one record per sample: prompt id, sample id, text, extracted answer,
                              label, token offset and count (written last: a shard counts once
                              its JSON exists)

Shard k always holds prompts [k*S, (k+1)*S), and every prompt draws from its own seed, so a run
killed at any point and started again redoes at most one shard and ends byte-identical.

Storage dtypes (bytes per token per layer): float16 2d, int8 d+2, fp8 d+2 (per-token-per-layer
absmax scale in fp16). ``pool="mean"`` stores one pooled vector per answer instead of per token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from hsrm.errors import HsrmError
from hsrm.features import TOPK_LAYER, Indices, TokenFeatures
from hsrm.io import read_json
from hsrm.models import ModelFingerprint
from hsrm.projection import Projection
from hsrm.store_write import (  # noqa: F401  (DTYPES, POOLS, StoreWriter, differing: re-exported)
    DTYPES,
    FORMAT_VERSION,
    POOLS,
    StoreWriter,
    _decode_hidden,
    _sha256,
    differing,
)

log = logging.getLogger(__name__)

_RECORD_KEYS = ("prompt_id", "label", "offset", "rows", "tok_offset", "n_tokens")


def _header(p: Path) -> tuple[int, dict[str, Any]]:
    """(header length, header) of a safetensors file."""
    with open(p, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, json.loads(f.read(n))


class RecordsView:
    """The read side a store and a union of stores share: features and columns over
    ``records``, given ``hidden`` / ``logprobs`` per record index."""

    records: list[dict[str, Any]]
    layers: tuple[int, ...]
    fingerprint: ModelFingerprint

    def __len__(self) -> int:
        return len(self.records)

    def hidden(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def logprobs(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def features(
        self, idx: Indices | None = None, layers: Sequence[int] | None = None
    ) -> TokenFeatures:
        """Lazy features of records ``idx`` (default all), optionally a layer subset."""
        f = TokenFeatures(
            self.hidden, len(self.records), self.layers, self.fingerprint, self.logprobs
        )
        if idx is not None:
            f = f.subset(idx)
        if layers is not None:
            f = f.select_layers(layers)
        return f

    # Column helpers (numpy arrays over records)
    def column(self, key: str) -> np.ndarray:
        return np.array([r[key] for r in self.records])

    @property
    def labels(self) -> np.ndarray:
        return self.column("label").astype(np.int64)

    @property
    def prompt_ids(self) -> np.ndarray:
        return self.column("prompt_id")


class Store(RecordsView):
    """Read side: records in memory, tensors memory-mapped and sliced per answer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mp = self.path / "meta.json"
        if not mp.exists():
            raise HsrmError(
                f"{self.path}: not a sample store (no meta.json); run `hsrm sample` first"
            )
        meta = read_json(mp, "store meta.json")
        if not isinstance(meta, dict):
            raise HsrmError(f"{mp}: expected a JSON object (damaged store?)")
        self.meta = meta
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise HsrmError(
                f"{mp}: format_version {self.meta.get('format_version')!r} is not supported "
                f"(this hsrm reads {FORMAT_VERSION!r})"
            )
        #: the model's own fingerprint; ``fingerprint`` is what the features carry (projected
        #: stores: width k and the projection's tag, so heads cannot mix projected and raw states)
        try:
            self.model_fingerprint = ModelFingerprint.from_dict(self.meta["fingerprint"])
            self.projection = Projection.from_dict(self.meta.get("projection"))
            self.layers = tuple(int(v) for v in self.meta["layers"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise HsrmError(
                f"{mp}: field 'fingerprint', 'projection' or 'layers' is damaged ({e})"
            ) from None
        # hidden-state indices run 0 (embeddings) .. n_layers, and n_layers + 1 (prenorm); a store
        # imported without a model holds the log's top-k log-probs instead, as layer TOPK_LAYER
        top = self.model_fingerprint.n_layers + 1
        logged = self.layers == (TOPK_LAYER,)
        if not self.layers or (not logged and any(not 0 <= v <= top for v in self.layers)):
            raise HsrmError(
                f"{mp}: field 'layers' is {list(self.layers)}, but the model has hidden states "
                f"0..{top} (damaged store)"
            )
        self.fingerprint = (
            self.projection.fingerprint(self.model_fingerprint)
            if self.projection is not None
            else self.model_fingerprint
        )
        self.records: list[dict[str, Any]] = []
        self._shards: list[Path] = []
        self._prompt_rows: dict[str, tuple[int, int]] = {}
        self._handles: dict[int, Any] = {}
        # A shard's JSON is written after its tensors, so a JSON without its safetensors (or with
        # a safetensors too short for its records) is damage, never an interrupted write.
        files = self.meta.get("files")
        if files is not None and not isinstance(files, dict):
            raise HsrmError(f"{mp}: field 'files' is damaged (expected an object)")
        seen: set[str] = set()
        for j in sorted(self.path.glob("shard-*.json")):
            st = j.with_suffix(".safetensors")
            if not st.exists():
                raise HsrmError(
                    f"{st}: missing, but {j.name} lists its samples (damaged store); "
                    f"restore the file, or delete {j.name} and resume sampling to redo the shard"
                )
            k = len(self._shards)
            self._shards.append(st)
            data = read_json(j, "shard index")
            try:
                prompts, recs = list(data["prompts"]), list(data["records"])
                for r in recs:
                    for key in _RECORD_KEYS:
                        if key not in r:
                            raise KeyError(key)
            except (KeyError, TypeError) as e:
                raise HsrmError(f"{j}: damaged shard index (missing or bad field {e})") from None
            self._check_records(j, prompts, recs)
            for pi, pid in enumerate(prompts):
                if pid in self._prompt_rows:
                    raise HsrmError(
                        f"{j}: prompt {pid!r} is also in "
                        f"{self._shards[self._prompt_rows[pid][0]].with_suffix('.json').name} "
                        "(damaged store)"
                    )
                self._prompt_rows[pid] = (k, pi)
            self._check_shard(k, recs, len(prompts), data.get("summary"))
            # after the checks that say which record or tensor is wrong: a size alone says less
            if files is not None:
                self._check_listed(files, j, st, seen)
            for r in recs:
                self.records.append({**r, "shard": k})
        if files is not None:
            gone = sorted(set(files) - seen)
            if gone:
                raise HsrmError(
                    f"{self.path / gone[0]}: missing, but meta.json lists it (damaged store; "
                    f"{len(gone)} file(s) missing)"
                )
            counts = self.meta.get("counts")
            have = {"shards": len(self._shards), "prompts": len(self._prompt_rows)}
            have["records"] = len(self.records)
            if isinstance(counts, dict):
                for key, n in have.items():
                    if counts.get(key) != n:
                        raise HsrmError(
                            f"{mp}: counts.{key} is {counts.get(key)!r}, the shards hold {n} "
                            "(damaged store)"
                        )
        if not self.complete:
            cmd = (
                self.meta.get("command") or f"the same `hsrm sample ... --out {self.path}` command"
            )
            log.warning(
                "%s: incomplete store (holds %d prompts, %d samples; sampling was interrupted or "
                "is still running); resume it with: %s",
                self.path,
                len(self._prompt_rows),
                len(self.records),
                cmd,
            )

    def _check_listed(self, files: dict[str, Any], j: Path, st: Path, seen: set[str]) -> None:
        """A finished store lists every shard file with its size (meta.json ``files``); a file
        added, cut or grown since is damage. (Checksums: ``hsrm check``, they read every byte.)"""
        for f in (j, st):
            want = files.get(f.name)
            if not isinstance(want, dict):
                if self.complete:
                    raise HsrmError(
                        f"{f}: not listed in meta.json's files (a shard added after the store was "
                        "finished?); remove it, or resume sampling into the store"
                    )
                continue  # written by a resume still running: its index summary vouches for it
            seen.add(f.name)
            size = f.stat().st_size
            if want.get("bytes") != size:
                raise HsrmError(
                    f"{f}: {size} bytes, meta.json's files.{f.name}.bytes says "
                    f"{want.get('bytes')!r} (damaged store; `hsrm check {self.path}` compares "
                    "checksums)"
                )

    def _check_records(self, j: Path, prompts: list[Any], recs: list[dict[str, Any]]) -> None:
        """Each record of shard index ``j`` is one answer of one of the shard's prompts, with the
        types ``write_shard`` gives them, laid end to end in the shard's tensors."""
        if not all(isinstance(p, str) for p in prompts) or len(set(prompts)) != len(prompts):
            raise HsrmError(f"{j}: field 'prompts' must be distinct strings (damaged store)")
        where = set(prompts)
        keys: set[tuple[str, Any]] = set()
        rows = toks = 0
        pooled = self.meta.get("pool", "none") != "none"
        for i, r in enumerate(recs):
            at = f"{j}: records[{i}]"
            if not isinstance(r, dict):
                raise HsrmError(f"{at}: expected an object (damaged store)")
            for key in ("sample", "offset", "rows", "tok_offset", "n_tokens"):
                v = r.get(key, 0)  # "sample": absent from hand-made indexes, never read
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise HsrmError(
                        f"{at}: field {key!r} is {v!r}, expected an integer >= 0 (damaged store)"
                    )
            if not isinstance(r["label"], bool):
                raise HsrmError(
                    f"{at}: field 'label' is {r['label']!r}, expected true or false (damaged store)"
                )
            if not isinstance(r["prompt_id"], str) or r["prompt_id"] not in where:
                raise HsrmError(
                    f"{at}: field 'prompt_id' is {r['prompt_id']!r}, not one of the shard's "
                    "prompts (damaged store)"
                )
            key2 = (r["prompt_id"], r.get("sample"))
            if key2 in keys:
                raise HsrmError(
                    f"{at}: sample {r.get('sample')!r} of prompt {r['prompt_id']!r} appears twice "
                    "(damaged store)"
                )
            keys.add(key2)
            # write_shard lays answers end to end: a gap or overlap means a record was removed,
            # duplicated or edited.
            if r["offset"] != rows or r["tok_offset"] != toks:
                raise HsrmError(
                    f"{at}: field 'offset'/'tok_offset' is {r['offset']}/{r['tok_offset']}, the "
                    f"records before it end at {rows}/{toks} (a record removed or edited; damaged "
                    "store)"
                )
            if pooled and r["rows"] != 1:
                raise HsrmError(
                    f"{at}: field 'rows' is {r['rows']}, a pooled store keeps 1 per answer "
                    "(damaged store)"
                )
            rows += r["rows"]
            toks += r["n_tokens"]

    def _check_shard(
        self, k: int, recs: list[dict[str, Any]], n_prompts: int, summary: Any = None
    ) -> None:
        """Open shard k and check its tensors are exactly what its records and the store's meta
        say: rows and tokens end to end, (rows, layers, width) hidden states, and, where the index
        has one (stores since issue 33), its summary's counts, size and shapes."""
        st = self._shards[k]
        j = st.with_suffix(".json")
        try:
            h = self._h(k)
            shapes = {n: list(h.get_slice(n).get_shape()) for n in h.keys()}
        except Exception as e:  # safetensors raises its own types for a damaged header
            raise HsrmError(f"{st}: damaged or truncated safetensors file ({e})") from None
        size = st.stat().st_size
        try:
            n, header = _header(st)
            end = max(
                (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise HsrmError(f"{st}: damaged safetensors header ({e})") from None
        if size < 8 + n + end:
            raise HsrmError(f"{st}: truncated ({size} bytes, the header needs more)")
        for name in ("hidden", "logprobs"):
            if name not in shapes:
                raise HsrmError(f"{st}: no {name!r} tensor (damaged store)")
        rows, toks = shapes["hidden"][0], shapes["logprobs"][0]
        need_rows = sum(r["rows"] for r in recs)
        need_toks = sum(r["n_tokens"] for r in recs)
        if rows != need_rows or toks != need_toks:
            raise HsrmError(
                f"{st}: holds {rows} rows / {toks} tokens but its index {j.name} needs "
                f"{need_rows} / {need_toks} (damaged store)"
            )
        L, d = len(self.layers), self.fingerprint.hidden_size
        want = {"hidden": [rows, L, d], "hidden_scale": [rows, L]}
        for name in ("entropy", "self_certainty", "confidence", "token_ids"):
            want[name] = [toks]
        if "prompt_hidden" in shapes:  # one row per prompt, in the index's order
            want["prompt_hidden"] = [n_prompts, L, d]
        for name, shape in want.items():
            if name in shapes and shapes[name] != shape:
                raise HsrmError(
                    f"{st}: tensor {name!r} has shape {shapes[name]}, but meta.json's layers "
                    f"({L}) and width ({d}) and {j.name}'s records make it {shape} (damaged store)"
                )
        if summary is None:
            return  # an index from before summaries: the checks above are all there is
        if not isinstance(summary, dict):
            raise HsrmError(f"{j}: field 'summary' is damaged (expected an object)")
        have = {
            "records": len(recs),
            "prompts": n_prompts,
            "rows": rows,
            "tokens": toks,
            "bytes": size,
            "shapes": shapes,
        }
        for key, v in have.items():
            if summary.get(key) != v:
                raise HsrmError(
                    f"{j}: summary.{key} is {summary.get(key)!r}, but the shard holds {v!r} "
                    "(damaged store)"
                )

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def _h(self, k: int):
        if k not in self._handles:
            self._handles[k] = safe_open(str(self._shards[k]), framework="pt")
        return self._handles[k]

    def _has(self, k: int, name: str) -> bool:
        return name in self._h(k).keys()

    def hidden(self, i: int) -> torch.Tensor:
        """(rows, L, d) float32 for record i (rows = tokens, or 1 when pooled)."""
        r = self.records[i]
        h = self._h(r["shard"])
        a, b = r["offset"], r["offset"] + r["rows"]
        q = h.get_slice("hidden")[a:b]
        scale = h.get_slice("hidden_scale")[a:b] if self._has(r["shard"], "hidden_scale") else None
        return _decode_hidden(q, scale)

    def logprobs(self, i: int) -> torch.Tensor:
        r = self.records[i]
        a = r["tok_offset"]
        return self._h(r["shard"]).get_slice("logprobs")[a : a + r["n_tokens"]]

    def entropy(self, i: int) -> torch.Tensor:
        r = self.records[i]
        a = r["tok_offset"]
        return self._h(r["shard"]).get_slice("entropy")[a : a + r["n_tokens"]]

    def token_stat(self, i: int, name: str) -> torch.Tensor:
        """(tokens,) per-token statistic of record i: ``logprobs``, ``entropy``, ``self_certainty``
        or ``confidence`` (see ``capture.token_stats``). Stores written before the last two existed
        raise HsrmError naming the shard."""
        r = self.records[i]
        if not self._has(r["shard"], name):
            raise HsrmError(
                f"{self._shards[r['shard']]}: no per-token {name!r} (resample the store)"
            )
        a = r["tok_offset"]
        return self._h(r["shard"]).get_slice(name)[a : a + r["n_tokens"]]

    def token_ids(self, i: int) -> list[int]:
        r = self.records[i]
        a = r["tok_offset"]
        return self._h(r["shard"]).get_slice("token_ids")[a : a + r["n_tokens"]].tolist()

    def prompt_hidden(self, prompt_id: str) -> torch.Tensor:
        k, pi = self._prompt_rows[prompt_id]
        if not self._has(k, "prompt_hidden"):
            raise HsrmError(f"{self._shards[k]}: no prompt_hidden tensor")
        return self._h(k).get_slice("prompt_hidden")[pi : pi + 1][0].float()

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob("shard-*"))


def check_store(path: str | Path) -> dict[str, Any]:
    """Everything ``Store`` checks on open (counts, sizes, shapes, record fields), then every
    byte: each shard file's sha256 against meta.json's ``files`` (a finished store) or its index's
    summary (a store still being written). Damage raises HsrmError naming the file; returns
    ``{"files": checked, "bytes": read, "checksums": bool}`` (False: a store from before hsrm
    recorded checksums, whose counts alone could be checked)."""
    st = Store(path)
    files = st.meta.get("files")
    want: dict[str, Any] = {}
    for sh in st._shards:
        summary = read_json(sh.with_suffix(".json"), "shard index").get("summary")
        if isinstance(summary, dict) and "sha256" in summary:
            want[sh.name] = summary["sha256"]
    if isinstance(files, dict):
        want.update({n: f.get("sha256") for n, f in files.items() if isinstance(f, dict)})
    n_bytes = 0
    for name in sorted(want):
        f = st.path / name
        got = _sha256(f)
        n_bytes += f.stat().st_size
        if got != want[name]:
            where = (
                "meta.json's files" if isinstance(files, dict) and name in files else "its index"
            )
            raise HsrmError(
                f"{f}: sha256 {got[:16]}..., {where} recorded {str(want[name])[:16]}... (the file "
                "changed after it was written: damaged store; restore it, or delete the shard's "
                "two files and resume sampling to redo it)"
            )
    return {"files": len(want), "bytes": n_bytes, "checksums": bool(want), "store": st}


class StoreUnion(RecordsView):
    """Several complete stores of one model and layers read as one: ``records``, ``labels``,
    ``prompt_ids`` and ``features`` over the first store's records, then the next's. Heads and
    controls train on it where one store's prompts are too few (the demo's training-only prompts,
    ``hsrm.bon.demo``). Prompt ids are the stores' own: stores of one task with other prompts
    (``skip_prompts``) never share one; stores of other task seeds can."""

    def __init__(self, stores: Sequence[Store]):
        if not stores:
            raise HsrmError("a store union needs at least one store")
        first = stores[0]
        for s in stores[1:]:
            if tuple(s.layers) != tuple(first.layers) or s.fingerprint != first.fingerprint:
                raise HsrmError(f"{s.path}: other model or layers than {first.path}")
        self.stores = list(stores)
        self.path, self.layers, self.fingerprint = first.path, first.layers, first.fingerprint
        self.records = [r for s in stores for r in s.records]
        self._starts = np.cumsum([0] + [len(s) for s in stores])

    def _locate(self, i: int) -> tuple[Store, int]:
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.stores[k], i - int(self._starts[k])

    def hidden(self, i: int) -> torch.Tensor:
        s, j = self._locate(i)
        return s.hidden(j)

    def logprobs(self, i: int) -> torch.Tensor:
        s, j = self._locate(i)
        return s.logprobs(j)
