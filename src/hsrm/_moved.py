"""Old module paths that moved, still importable for one release (with a DeprecationWarning).

A module that moved whole is served under its old name as the *same* module object (a finder on
``sys.meta_path``), so ``import hsrm.scorers`` and ``from hsrm.evaluate import bon_report`` keep
working and a monkeypatch through either name patches both. No file is left at the old path, so
git follows the moves. ``hsrm.pipeline``, which was split over several modules, is a re-export file.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

#: old module name -> new module name
MOVED = {
    "hsrm.evaluate": "hsrm.bon.report",
    "hsrm.scorers": "hsrm.bon.scorers",
    "hsrm.quality": "hsrm.bon.quality",
    "hsrm.prune": "hsrm.bon.prune",
    "hsrm.report_html": "hsrm.report.html",
    "hsrm.tables": "hsrm.report.tables",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec: Any) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2
        )
        module = importlib.import_module(new)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system set the alias spec on the shared module object: give it back its own
        module.__spec__ = self._real_spec


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
