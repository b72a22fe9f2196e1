"""Evaluation: attacks, the family evaluation (computes dicts), reports and model cards."""
