"""Code snapshots: a job runs the code it was submitted with, not the working tree of the day it starts.

At submission the repository's commit (`git archive HEAD`) plus its uncommitted changes (`git diff
HEAD --binary`) and untracked, non-ignored files are written once to
`<output_root>/.code/<commit[:12]>-<digest of the changes>/`, with `code.json` recording commit,
digest and dirty flag. Jobs are submitted from that folder: the batch script starts Python there,
so every module (and the task itself) is imported from the snapshot; `StageTask` then puts the
snapshot first on `sys.path` and goes back to the submission directory, where relative paths
(`runs`, `data`) mean what they meant on the login node. Provenance reads `code.json` (a snapshot
is no git checkout), so results of one launch never mix commits.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from common.rundir import CODE_RECORD


@dataclass(frozen=True)
class CodeSnapshot:
    folder: Path
    commit: str
    diff_digest: str  # "" for a clean working tree
    dirty: bool


def _git(repository: Path, *arguments: str) -> bytes:
    completed = subprocess.run(["git", *arguments], cwd=repository, capture_output=True, timeout=120)
    if completed.returncode:
        raise RuntimeError(f"git {' '.join(arguments)} failed in {repository}: "
                           f"{completed.stderr.decode(errors='replace').strip()}")
    return completed.stdout


def working_tree_changes(repository: Path) -> tuple[str, bytes, list[str]]:
    """(commit, binary diff of tracked files against HEAD, untracked non-ignored paths)."""
    commit = _git(repository, "rev-parse", "HEAD").decode().strip()
    diff = _git(repository, "diff", "HEAD", "--binary")
    listing = _git(repository, "ls-files", "--others", "--exclude-standard", "-z").decode()
    untracked = [path for path in listing.split("\0") if path]
    return commit, diff, sorted(untracked)


def changes_digest(repository: Path, diff: bytes, untracked: list[str]) -> str:
    """12 hex digits over the diff and the untracked files' names and contents; "" when clean."""
    if not diff and not untracked:
        return ""
    digest = hashlib.sha256(diff)
    for path in untracked:
        digest.update(path.encode() + b"\0")
        file = repository / path
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def snapshot_code(repository: Path, snapshots_root: Path) -> CodeSnapshot:
    """Write (once) and return the snapshot of `repository`'s current code."""
    repository = Path(repository).resolve()
    commit, diff, untracked = working_tree_changes(repository)
    digest = changes_digest(repository, diff, untracked)
    folder = Path(snapshots_root).resolve() / (f"{commit[:12]}-{digest}" if digest else commit[:12])
    snapshot = CodeSnapshot(folder, commit, digest, bool(digest))
    if (folder / CODE_RECORD).is_file():  # the same code was snapshotted before
        return snapshot
    staging = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(_git(repository, "archive", "--format=tar", "HEAD"))) as archive:
        archive.extractall(staging, filter="data")
    if diff:
        applied = subprocess.run(["git", "apply", "--binary", "--whitespace=nowarn", "-"], cwd=staging, input=diff,
                                 capture_output=True, timeout=120)
        if applied.returncode:
            raise RuntimeError(f"could not apply the uncommitted changes to the code snapshot: "
                               f"{applied.stderr.decode(errors='replace').strip()}")
    for path in untracked:
        source = repository / path
        if source.is_file():
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staging / path)
    (staging / CODE_RECORD).write_text(json.dumps({"commit": commit, "diff_digest": digest, "dirty": bool(digest),
                                                   "repository": str(repository)}, indent=2))
    try:
        staging.rename(folder)
    except OSError:  # another launcher wrote the same snapshot first
        shutil.rmtree(staging, ignore_errors=True)
    return snapshot


def read_code_record(root: Path) -> dict | None:
    """The snapshot record of a code folder, or None for a git checkout."""
    path = Path(root) / CODE_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


@contextlib.contextmanager
def submitting_from(folder: Path | None) -> Iterator[None]:
    """Make jobs submitted inside start in `folder` (the batch system and submitit's local executor
    start them in the submitting process's working directory)."""
    if folder is None:
        yield
        return
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)
