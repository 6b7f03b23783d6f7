"""Hidden-state rewards for RL trainers (TRL's GRPO, OpenRLHF): ``hsrm.rl.reward``."""

from hsrm.rl.reward import HiddenStateReward, group_relative_advantages, openrlhf_reward_func

__all__ = ["HiddenStateReward", "group_relative_advantages", "openrlhf_reward_func"]
