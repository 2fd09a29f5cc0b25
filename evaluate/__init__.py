"""Evaluation protocols (run as `python -m evaluate`).

PROTOCOL_MODULES registers them: adding a protocol is one module of this package that declares its
`PROTOCOL` (named like the module) and one name here (evaluate/protocols.py imports them).
"""
PROTOCOL_MODULES = ("knn", "linear", "finetune", "similarity", "knn_standardized")
