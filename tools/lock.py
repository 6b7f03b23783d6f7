"""The lock's two checks, run by the Makefile (no hsrm import, standard library only).

    python tools/lock.py check requirements.lock requirements-nodeps.lock
        The running interpreter's installed distributions equal the lock files' pins (hsrm itself
        aside): exit 1 and the differences otherwise. ``make install`` ends with it, so a venv
        that drifted from the lock (a hand install, a stale venv) is named, not tested.
    python tools/lock.py diff requirements.lock .venv-latest/latest.txt
        What the newest releases the ranges allow change against the lock (``make test-latest``).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

SKIP = {"hsrm"}  # the editable project itself


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(*paths: str) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line (comments and options skipped)."""
    out: dict[str, str] = {}
    for path in paths:
        for n, raw in enumerate(Path(path).read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)(\s*;.*)?", line)
            if m is None:
                sys.exit(f"{path}:{n}: not a 'name==version' pin: {raw.strip()!r}")
            out[_norm(m.group(1))] = m.group(3)
    return out


def installed() -> dict[str, str]:
    found = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    return {k: v for k, v in found.items() if k not in SKIP}


def _report(want: dict[str, str], have: dict[str, str], want_label: str, have_label: str) -> int:
    rows = []
    for name in sorted(set(want) | set(have)):
        a, b = want.get(name), have.get(name)
        if a != b:
            rows.append(f"  {name}: {want_label} {a or '-'}, {have_label} {b or '-'}")
    print("\n".join(rows) if rows else "  nothing differs")
    return len(rows)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in {"check", "diff"}:
        print(__doc__)
        return 2
    if argv[0] == "check":
        want = pins(*argv[1:])
        have = installed()
        if want == have:
            print(f"venv equals the lock: {len(want)} distributions pinned")
            return 0
        print(f"the venv at {sys.prefix} differs from {', '.join(argv[1:])}:")
        _report(want, have, "lock", "installed")
        print("rebuild it: rm -rf .venv && make install")
        return 1
    old, new = pins(argv[1]), pins(*argv[2:])
    print(f"newest releases the ranges allow, against {argv[1]}:")
    n = _report(old, new, "lock", "newest")
    print(f"{n} distributions differ")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
