"""COCO transfer: Mask R-CNN with a ViT backbone through detectron2 (run as `python -m transfer`).

detectron2 has no PyPI release; install it from its git repository after torch (DETECTRON2_MISSING).
`transfer.weights` (checkpoint conversion) and `transfer.shapes` (a generated COCO-format set) work
without it.
"""

DETECTRON2_MISSING = (
    "the transfer stage needs detectron2, which has no PyPI release. Install it after torch with:\n"
    "    pip install -r requirements-transfer.txt\n"
    "    pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git@02b5c4e'"
)


def require_detectron2() -> None:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise SystemExit(f"error: {DETECTRON2_MISSING}") from None
