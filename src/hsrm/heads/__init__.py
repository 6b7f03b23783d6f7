"""Reward heads, one module per method, registered by name (``make_head("elhsr")``).

A new head type is one module: a ``Head`` subclass that declares what commands and reports need
to know on the class (``default_layers``, ``calibrated``, ``token_view``, ``display_order``,
``label``; see ``hsrm.heads.base.Head``), decorated with ``@register("name")``, and imported
below (``tests/test_head_plugin.py`` runs a toy one through train, evaluate and the report)."""

from hsrm.heads.base import REGISTRY, Head, get_head_class, make_head, register, unregister
from hsrm.heads.elhsr import ELHSRHead
from hsrm.heads.harp import HARPHead
from hsrm.heads.logits import LogitsELHSRHead, TopLogprobsELHSRHead
from hsrm.heads.probe import ProbeHead
from hsrm.heads.rank import RankHead
from hsrm.heads.sparserm import DenseRMHead, SparseRMHead

__all__ = [
    "REGISTRY",
    "ELHSRHead",
    "HARPHead",
    "Head",
    "LogitsELHSRHead",
    "TopLogprobsELHSRHead",
    "ProbeHead",
    "RankHead",
    "SparseRMHead",
    "DenseRMHead",
    "get_head_class",
    "make_head",
    "register",
    "unregister",
]
