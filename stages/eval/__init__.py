"""Evaluation stage: compare policies on held-out prompts (scores, KL, length, EOS rate, win rates with bootstrap
intervals, sampled and greedy) and trace the over-optimization curve of the PPO stage's snapshots."""
