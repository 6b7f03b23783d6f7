"""Preferences: pair data (TRL / RewardBench JSONL, TruthfulQA), pairwise reward heads'
evaluation, and building preference pairs for DPO from scored samples."""
