"""Launching stages locally or on SLURM through submitit (run as `python -m slurm`)."""
