"""Evaluation protocols: weighted kNN, linear probe, finetune (run as `python -m evaluate`)."""
