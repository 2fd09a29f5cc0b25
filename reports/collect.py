"""Read result.json files into one pandas table (never model code, never incomplete runs)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from common.rundir import EXPERIMENTS_FILE

REFERENCE_CSV = Path(__file__).resolve().parent / "reference" / "paper_tables.csv"


def load_reference() -> pd.DataFrame:
    """The paper's Tables 2-7 (method, backbone, epochs, dataset, protocol, value; NA where the
    paper has no number)."""
    return pd.read_csv(REFERENCE_CSV, keep_default_na=True)


def _flatten(record: dict, path: Path) -> dict:
    provenance = record.get("provenance", {})
    row = {key: value for key, value in record.items() if not isinstance(value, (dict, list))}
    # A non-finite metric stays visible as text ("nan", "inf"), never as pandas' missing value.
    row.update({f"metric.{k}": (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in record.get("metrics", {}).items()})
    row.update({"git_commit": provenance.get("git_commit", "unknown"), "git_dirty": provenance.get("git_dirty", False),
                "result_path": str(path), "run_dir": str(path.parent), "completed": path.stat().st_mtime})
    for key, value in record.items():  # curves and histograms for the plots
        if isinstance(value, list) and (key == "loss_curve" or key.startswith("similarity_")):
            row[key] = value
    return row


def collect(output_root: Path) -> pd.DataFrame:
    """One row per completed run under `output_root` (any depth). result.json files that cannot be
    read are not rows: they are listed, with the reason, in `frame.attrs["damaged"]` (path, reason)
    so that reports name them instead of absorbing them silently."""
    rows, damaged = [], []
    for path in sorted(Path(output_root).glob("**/result.json")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            rows.append(_flatten(record, path))
            aliases = path.parent / EXPERIMENTS_FILE  # other plan stages this run serves (same config)
            if aliases.is_file():
                rows += [{**rows[-1], "experiment": key} for key in json.loads(aliases.read_text())]
        except (OSError, ValueError) as error:  # written atomically, so damaged after the fact
            damaged.append((str(path), f"{type(error).__name__}: {error}"))
    frame = pd.DataFrame(rows)
    frame.attrs["damaged"] = damaged
    return frame


def split_superseded(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(current, superseded): per experiment (a plan stage, seed included) the newest completed result
    is current; older ones -- the same stage run before under another config or code version, which
    lands in another run directory -- are superseded and must not be averaged with the current ones."""
    if results.empty or "experiment" not in results:
        return results, results.iloc[0:0]
    newest_first = results.sort_values("completed", ascending=False, kind="stable")
    older = newest_first.duplicated(subset="experiment", keep="first")
    return newest_first[~older].sort_index(), newest_first[older].sort_index()
