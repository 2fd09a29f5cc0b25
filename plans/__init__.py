"""Experiment plans (which runs make each table and figure) and the registry of stage records:
the home the launcher (slurm/) and the reports (reports/) both depend on."""
