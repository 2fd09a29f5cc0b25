"""Reports: markdown tables and plots from result.json files (run as `python -m reports`)."""
