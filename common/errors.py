"""The failures a run reports to its user, and the exit status of each (no torch here, so that a
command line can name them before it imports anything heavy)."""
from __future__ import annotations

# Exit statuses of every command: 2 = input refused before any work (config, preset, paths, data,
# a run directory in use); 3 = training diverged (a non-finite loss); 4 = a run stopped for another
# reason (a budget of bad images or skipped fp16 steps, a full disk, unreadable files mid-run).
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_STOPPED = 2, 3, 4


class NonFiniteLossError(FloatingPointError):
    """A rank saw a NaN or infinite loss; every rank stops at the same step."""


class TrainingAborted(RuntimeError):
    """A budget was exceeded (unreadable images, skipped fp16 steps)."""


class RunDirectoryBusy(RuntimeError):
    """Another live process owns the run directory."""


class DiskWriteError(OSError):
    """A write failed for lack of space or quota; the message names the file and what to do."""


class DatasetFileError(ValueError):
    """A dataset file is empty, cut short, corrupted or not what its name says; the message names the
    file, what is wrong with it and how to replace it. Input refused before any work (exit 2)."""
