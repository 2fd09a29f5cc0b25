"""Shared core of the PatchMix suite: configs, datasets, ViT builder, checkpoints, run directories.

Nothing in here imports from the stage packages (pretrain/, evaluate/, transfer/, reports/, slurm/).
"""
