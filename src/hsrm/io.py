"""Atomic writes and safe output folders: a reader never sees a half-written file or folder, a
command never deletes what it did not write, and one writer at a time owns an output folder.

Every command that writes a folder goes through ``atomic_dir`` (folders that appear in one rename:
heads, SAEs, reports) or ``check_out`` + ``exclusive`` (folders written in place: the resumable
sample store). Both refuse, before anything is written:

* a path that is an existing file;
* ``--out`` equal to an input, or holding one (replacing it would destroy the input);
* a non-empty folder that is not an earlier hsrm output of the same kind (``.hsrm`` marker, or the
  files an older hsrm wrote), unless ``overwrite``; even then only files hsrm wrote are replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hsrm.errors import HsrmError

#: Marker inside every output folder: {"kind": ..., "files": [names hsrm wrote]}.
MARKER = ".hsrm"
# Moved into an existing folder last, so a folder killed mid-merge never pairs a new head with an
# old training record (evaluate refuses a head without ``training.json``).
_COMMIT_LAST = ("config.json", "training.json", MARKER)
# What `hsrm evaluate` wrote before markers existed.
_LEGACY_EVAL = {"results.json", "results.md", "bon.png"}


def _umask() -> int:
    # os.umask is the only portable way to read it; set it straight back.
    m = os.umask(0o022)
    os.umask(m)
    return m


def _chmod_default(path: str | Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the file the mode a plain open() would."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _chmod_default(tmp, is_dir=False)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            # A full disk or `ulimit -f` (ENOSPC, EFBIG) fails a write on an open file, and
            # Python names no file then: name the one being written, for the message.
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_text(path: str | Path, what: str = "text file") -> str:
    """Read a UTF-8 text file; missing, unreadable or not UTF-8 -> HsrmError naming the file (and
    the line of the first bad byte)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HsrmError(f"{path}: {what} not found") from None
    except OSError as e:
        raise HsrmError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise HsrmError(f"{path}:{line}: not UTF-8 text; is it a {what}?") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read a JSON file; missing, non-UTF-8 or malformed -> HsrmError naming the file and line."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise HsrmError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); damaged {what}?") from None


# ----------------------------------------------------------------------------------------------
# output folders
def _legacy_kind(p: Path) -> str | None:
    """The kind of an output folder written before markers existed (by the files it holds)."""

    def _json_has(name: str, *keys: str) -> bool:
        try:
            d = json.loads((p / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(d, dict) and all(k in d for k in keys)

    if _json_has("config.json", "architecture", "fingerprint", "format_version"):
        return "head"
    if _json_has("meta.json", "format_version", "fingerprint"):
        return "store"
    if (p / "samples" / "meta.json").exists() and (p / "results.json").exists():
        return "demo"
    names = set(_entries(p)) if p.is_dir() else set()
    if "results.json" in names and names <= _LEGACY_EVAL:
        return "eval"
    if (p / "hsrm_source.json").exists():
        return "model-cache"
    if (p / "cfg.json").exists() and (p / "sae_weights.safetensors").exists():
        return "sae"
    return None


def _marker(p: Path) -> dict[str, Any] | None:
    try:
        d = json.loads((p / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("kind"), str) else None


def output_kind(path: str | Path) -> str | None:
    """What hsrm output ``path`` is (``head``, ``store``, ``eval``, ...), or None."""
    p = Path(path)
    m = _marker(p)
    return m["kind"] if m else _legacy_kind(p)


def _entries(p: Path) -> list[str]:
    """Names in a folder, without hsrm's own stale temporaries and lock files."""
    return sorted(
        n
        for n in os.listdir(p)
        if not (n.startswith(".") and (n.endswith(".tmp") or n.endswith(".lock")))
    )


def _owned(p: Path, kind: str) -> set[str]:
    """Names in an existing output folder that hsrm wrote (and so may replace)."""
    m = _marker(p)
    if m and isinstance(m.get("files"), list):
        return {str(n) for n in m["files"]} | {MARKER}
    legacy = {
        "head": {"config.json", "head.safetensors", "training.json"},
        "sae": {"cfg.json", "sae_weights.safetensors"},
        "eval": _LEGACY_EVAL,
    }
    if kind in legacy and _legacy_kind(p) == kind:
        return legacy[kind]
    if kind == "model-cache" and _legacy_kind(p) == kind:
        return set(_entries(p))  # hsrm's own cache: it wrote everything there
    return set()


def _within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def mark_output(path: str | Path, kind: str, files: Iterable[str] = ()) -> None:
    """Write (or update) the ``.hsrm`` marker saying ``path`` is an hsrm output of ``kind``."""
    p = Path(path)
    old = _marker(p) or {}
    names = set(old.get("files") or []) if old.get("kind") == kind else set()
    atomic_write_json(p / MARKER, {"kind": kind, "files": sorted(names | set(files))})


def _a(kind: str) -> str:
    return ("an " if kind[:1] in "aeio" else "a ") + kind


def check_out(
    path: str | Path,
    kind: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
    inside_inputs_ok: bool = False,
) -> Path:
    """Refuse an output folder hsrm must not write (see the module docstring); writes nothing."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise HsrmError(f"{p}: exists and is a file, not a folder; choose another --out")
    for up in p.parents:  # `--out afile/sub`: mkdir would say only "afile: File exists"
        if up.exists() and not up.is_dir():
            raise HsrmError(
                f"{p}: cannot be made, {up} is a file, not a folder; choose another --out"
            )
    rp = p.resolve()
    for inp in inputs:
        ri = Path(inp).resolve()
        if _within(ri, rp):
            raise HsrmError(
                f"{p}: the output folder is (or holds) the input {inp}; writing there would "
                "destroy it; choose another --out"
            )
        if _within(rp, ri) and not inside_inputs_ok:
            raise HsrmError(
                f"{p}: the output folder is inside the input {inp}; choose another --out"
            )
    if p.is_dir() and _entries(p):
        have = output_kind(p)
        if have == kind:
            return p
        if have is not None:
            raise HsrmError(
                f"{p}: holds an hsrm {have}, and this command writes {_a(kind)}; choose another "
                "--out (hsrm never replaces one kind of output with another)"
            )
        if not overwrite:
            names = _entries(p)
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise HsrmError(
                f"{p}: folder is not empty ({shown}) and is not an earlier hsrm {kind}; choose "
                "another --out, or pass --overwrite to write into it (hsrm then replaces only "
                "files it wrote and keeps the others)"
            )
    return p


# ----------------------------------------------------------------------------------------------
# one writer per folder
_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth): reentrant within a process


def lock_path(path: str | Path) -> Path:
    """The lock file of an output folder: a hidden sibling, so it can be taken before the folder
    exists and outlives the folder being replaced in one rename. Removed on release."""
    p = Path(path).resolve()
    return p.with_name(f".{p.name}.lock")


def _holder_pid(fd: int, wait_s: float = 1.0) -> str:
    """The PID the lock's holder wrote into it. The holder writes it just after it wins the lock,
    so a loser that arrives in between reads an empty file: poll briefly before saying "?"."""
    deadline = time.monotonic() + wait_s
    while True:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid or time.monotonic() >= deadline:
            return pid or "?"
        time.sleep(0.01)


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold the one-writer lock of ``path``; a second writer gets HsrmError naming the holder.

    ``fcntl.flock``: the kernel drops it when the holder dies, so a killed run never leaves a
    stale lock behind."""
    lp = lock_path(path)
    key = str(lp)
    if key in _HELD:  # this process already holds it (e.g. train -> Head.save)
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    lp.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = _holder_pid(fd)
            finally:
                os.close(fd)
            raise HsrmError(
                f"{Path(path)} is in use by PID {pid} (another hsrm run is writing it); wait for "
                "it to finish or choose another --out"
            ) from None
        # The holder before us unlinks the file on release: make sure we locked the file that
        # is still there, not the orphan it just removed.
        try:
            same = os.fstat(fd).st_ino == os.stat(lp).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[key] = (fd, 1)
    try:
        yield
    finally:
        fd, depth = _HELD[key]
        if depth <= 1:
            del _HELD[key]
            # Unlink while still holding the lock, then close (which releases it).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lp)
            os.close(fd)
        else:
            _HELD[key] = (fd, depth - 1)


def acquire(path: str | Path) -> contextlib.ExitStack:
    """``exclusive(path)`` held until the returned stack is closed (or the process ends)."""
    stack = contextlib.ExitStack()
    stack.enter_context(exclusive(path))
    return stack


def clean_stale(folder: str | Path, pattern: str) -> None:
    """Delete temporaries a killed writer left (call only while holding the folder's lock)."""
    for stale in Path(folder).glob(pattern):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(
    path: str | Path,
    kind: str = "output",
    *,
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
    inside_inputs_ok: bool = False,
) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it becomes ``path``.

    ``path`` is checked first (``check_out``) and locked for the whole write. A new folder appears
    in one rename, complete. An earlier output of the same kind that holds only files hsrm wrote
    is swapped out in two renames; one that holds other files too (or a foreign folder with
    ``overwrite``) keeps them: only hsrm's files are replaced, the record files last."""
    path = Path(path)
    if path.is_symlink():
        # `--out LINK` means the folder the link names: it is replaced there, atomically as any
        # other, and the link stays a link (renaming over the link would turn it into a folder
        # and leave the old target orphaned).
        path = Path(os.path.realpath(path))
    check_out(path, kind, overwrite=overwrite, inputs=inputs, inside_inputs_ok=inside_inputs_ok)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path):
        # Under the lock nobody else is writing: any temporaries of this folder are stale.
        clean_stale(path.parent, f".{path.name}.*.tmp")
        clean_stale(path.parent, f".{path.name}.old")
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        _chmod_default(tmp, is_dir=True)
        try:
            yield tmp
            files = sorted(n for n in os.listdir(tmp) if n != MARKER)
            atomic_write_json(tmp / MARKER, {"kind": kind, "files": files})
            if not path.exists():
                os.replace(tmp, path)
                return
            owned = _owned(path, kind)
            foreign = [n for n in os.listdir(path) if n not in owned]
            if not foreign:
                old = path.with_name(f".{path.name}.old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
                return
            # Merge: drop what hsrm wrote before (records first), then move the new files in.
            for n in sorted(owned, key=lambda n: n not in _COMMIT_LAST):
                q = path / n
                if q.is_dir() and not q.is_symlink():
                    shutil.rmtree(q)
                elif q.exists() or q.is_symlink():
                    q.unlink()
            new = sorted(
                os.listdir(tmp),
                key=lambda n: _COMMIT_LAST.index(n) if n in _COMMIT_LAST else -1,
            )
            for n in new:
                os.replace(tmp / n, path / n)
            os.rmdir(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSONL; a malformed or non-UTF-8 line raises HsrmError naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise HsrmError(f"file not found: {path}")
    if path.is_dir():
        raise HsrmError(f"{path}: is a folder, expected a JSONL file")
    rows = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise HsrmError(
                    f"{path}:{i}: not UTF-8 text (byte {e.start} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise HsrmError(
                    f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise HsrmError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
            obj["_line"] = i
            rows.append(obj)
    return rows
