"""PatchMix contrastive pretraining (run as `python -m pretrain`)."""
