"""Scorers that are not hidden-state heads: text reward models, LLM judges, fusion, and controls."""
