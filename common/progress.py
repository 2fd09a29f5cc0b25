"""Progress of a long loop: a tqdm bar on a terminal; on a batch system's log (not a terminal) one
plain line per report instead, so that a 48-hour job does not write megabytes of bar redraws."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """`update(n)` after each unit; `report(**values)` at a log point (the bar's postfix on a terminal,
    a line with position/total, the values, items per second and the ETA otherwise)."""

    def __init__(self, total: int, initial: int, description: str, unit: str, enabled: bool = True,
                 items_per_unit: int = 1, item_name: str = "img"):
        self.total, self.position, self.description, self.unit = total, initial, description, unit
        self.items_per_unit, self.item_name = items_per_unit, item_name
        self.interactive = sys.stderr.isatty()
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=initial, desc=description, unit=unit, dynamic_ncols=True,
                        disable=not (enabled and self.interactive))
        self.started, self.first = time.time(), initial

    def update(self, count: int = 1) -> None:
        self.position += count
        self.bar.update(count)

    def report(self, **values: str) -> None:
        if not self.enabled:
            return
        if self.interactive:
            self.bar.set_postfix(values)
            return
        elapsed = max(time.time() - self.started, 1e-9)
        rate = (self.position - self.first) / elapsed  # units per second in this session
        eta = _duration((self.total - self.position) / rate) if rate > 0 else "?"
        shown = " ".join(f"{name}={value}" for name, value in values.items())
        print(f"[{self.description}] {self.unit} {self.position}/{self.total} ({100 * self.position / self.total:.0f}%) "
              f"{shown} {rate * self.items_per_unit:.1f} {self.item_name}/s ETA {eta}", flush=True)

    def close(self) -> None:
        self.bar.close()
