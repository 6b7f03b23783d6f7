"""Where a model runs and in what dtype: ``auto`` and named devices and model dtypes, resolved and
checked the same way for every command (below ``hsrm.models``, which loads with them, and
``hsrm.lm``, which runs the loaded model).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hsrm.errors import HsrmError

DEVICES = ("auto", "cpu", "cuda", "mps")
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | None) -> str:
    """``auto``/None -> cuda, else mps, else cpu; a clear error for unknown or absent devices."""
    d = (device or "auto").strip().lower()
    base = d.split(":", 1)[0]
    if base not in DEVICES:
        raise HsrmError(f"device: unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if base == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if base == "cuda" and not torch.cuda.is_available():
        raise HsrmError(f"device: {device!r} asked for, but this torch sees no CUDA GPU")
    if base == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise HsrmError(f"device: {device!r} asked for, but MPS is not available here")
    return d


def cpu_bf16_native(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 dot products in hardware (x86 ``avx512_bf16`` or AMX-BF16).
    There torch's bf16 kernels outrun float32: the embedded model samples the demo's task 1.8-2.1x
    faster at the same accuracy (benchmarks/results/cpu_dtype.md). Without them bf16 is converted
    in software, so ``auto`` keeps float32 there (not measured on such a CPU here)."""
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:  # not Linux, or no procfs: assume not
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(device: str) -> str:
    """What model dtype ``auto`` means on ``device``, the one rule of every command
    (``hsrm.models.ModelConfig``): bfloat16 on CUDA GPUs (float16 on those without bf16); float16
    on mps (which lacks bf16 here); on the CPU bfloat16 where it computes it natively
    (``cpu_bf16_native``), else float32."""
    base = device.split(":", 1)[0]
    if base == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if base == "mps":
        return "float16"
    return "bfloat16" if cpu_bf16_native() else "float32"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """Model dtype by name, refused where the device cannot compute in it."""
    if dtype not in MODEL_DTYPES:
        raise HsrmError(
            f"dtype: unknown model dtype {dtype!r}; use one of {', '.join(MODEL_DTYPES)}"
        )
    td = MODEL_DTYPES[dtype]
    base = device.split(":", 1)[0]
    if base == "cuda" and td is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise HsrmError(f"dtype: bfloat16 is not supported by this GPU ({device}); use float16")
    if base == "mps" and td is torch.bfloat16:
        raise HsrmError("dtype: bfloat16 is not supported on mps here; use float16 or float32")
    if base == "cpu" and td is torch.float16:
        # CPU half matmuls are emulated (or missing) in most torch builds: 10x+ slower than float32.
        raise HsrmError(
            "dtype: float16 is not supported for models on cpu; use float32 or bfloat16"
        )
    return td
