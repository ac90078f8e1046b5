"""Benchmarks: our PPO side by side with trl 1.12.0's PPOTrainer (a reference in its own venv, never a dependency).

Modules here that run inside the reference venv (``trl112_ppo``, ``metrics``) import nothing from the product.
"""
