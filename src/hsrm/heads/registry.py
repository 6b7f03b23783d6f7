"""The head registry: type name -> head class.

It imports nothing, so any layer may read it (reports order and label scorers by their head
class) without importing the heads. ``@register`` (``heads/base.py``) fills it as the head modules
load; importing any module of the ``hsrm.heads`` package runs the package first, and the package
imports every built-in head, so the built-ins are always registered before anyone reads this.
"""

from __future__ import annotations

from typing import Any

#: name -> class (``type[hsrm.heads.base.Head]``)
REGISTRY: dict[str, Any] = {}
