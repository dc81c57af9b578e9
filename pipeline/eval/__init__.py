"""Evaluation as pure functions: metrics, thresholds, the evaluation protocol, the champion rule
(selection), the leaderboard and the plots. A new metric goes in metrics.py (with its reference test)."""
