"""Reward heads, one module per method, registered by name (``make_head("elhsr")``)."""

from hsrm.heads.base import REGISTRY, Head, get_head_class, make_head, register
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
]
