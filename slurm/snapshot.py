"""Code snapshots: a job runs the code it was submitted with, not the working tree of the day it starts.

At submission the repository's commit (`git archive HEAD`) plus its uncommitted changes (`git diff
HEAD --binary`) and untracked, non-ignored files are written once to
`<output_root>/.code/<commit[:12]>-<digest of the changes>/`, with `code.json` recording commit,
digest and dirty flag. Jobs are submitted from that folder: the batch script starts Python there,
so every module (and the task itself) is imported from the snapshot; `StageTask` then puts the
snapshot first on `sys.path` and goes back to the submission directory, where relative paths
(`runs`, `data`) mean what they meant on the login node. Provenance reads `code.json` (a snapshot
is no git checkout), so results of one launch never mix commits.

Untracked files larger than `max_file_bytes` (ClusterConfig.snapshot_max_file_mb, 10 MB unless set)
are left out, neither copied nor hashed, and named at submission: data or weights lying in the
checkout would otherwise be copied into every snapshot. The others are hashed in chunks. A snapshot
is staged in a temporary folder named as atomic writes name theirs, so a launcher killed mid-copy
leaves nothing that the next launch does not remove (common.checkpoint.remove_stale_temporaries).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from common.checkpoint import remove_stale_temporaries
from common.rundir import CODE_RECORD

MAX_FILE_MB = 10.0  # untracked files above this size are left out of snapshots (ClusterConfig.snapshot_max_file_mb)
CHUNK_BYTES = 1 << 20  # files are hashed this much at a time, never read whole


@dataclass(frozen=True)
class CodeSnapshot:
    folder: Path
    commit: str
    diff_digest: str  # "" for a clean working tree
    dirty: bool
    left_out: tuple[tuple[str, int], ...] = ()  # (path, size in bytes) of untracked files over the size limit


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


def split_by_size(repository: Path, untracked: list[str],
                  max_file_bytes: int) -> tuple[list[str], list[tuple[str, int]]]:
    """(untracked paths to snapshot, (path, size) of the files over `max_file_bytes`, left out)."""
    kept, left_out = [], []
    for path in untracked:
        file = repository / path
        size = file.stat().st_size if file.is_file() else 0
        if size > max_file_bytes:
            left_out.append((path, size))
        else:
            kept.append(path)
    return kept, left_out


def changes_digest(repository: Path, diff: bytes, untracked: list[str]) -> str:
    """12 hex digits over the diff and the untracked files' names and contents; "" when clean."""
    if not diff and not untracked:
        return ""
    digest = hashlib.sha256(diff)
    for path in untracked:
        digest.update(path.encode() + b"\0")
        file = repository / path
        if file.is_file():
            with open(file, "rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    digest.update(chunk)
    return digest.hexdigest()[:12]


def snapshot_code(repository: Path, snapshots_root: Path,
                  max_file_bytes: int = int(MAX_FILE_MB * 2**20)) -> CodeSnapshot:
    """Write (once) and return the snapshot of `repository`'s current code, untracked files larger than
    `max_file_bytes` left out (listed in the returned snapshot and its record)."""
    repository = Path(repository).resolve()
    commit, diff, untracked = working_tree_changes(repository)
    untracked, left_out = split_by_size(repository, untracked, max_file_bytes)
    digest = changes_digest(repository, diff, untracked)
    folder = Path(snapshots_root).resolve() / (f"{commit[:12]}-{digest}" if digest else commit[:12])
    snapshot = CodeSnapshot(folder, commit, digest, bool(digest), tuple(left_out))
    remove_stale_temporaries(folder.parent)  # partial snapshots of launchers killed mid-copy
    if (folder / CODE_RECORD).is_file():  # the same code was snapshotted before
        return snapshot
    # Named as atomic writes name their temporaries (pid and host): only a dead process's is removed.
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}@{socket.gethostname()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_snapshot(repository, staging, snapshot, diff, untracked)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        staging.rename(folder)
    except OSError:  # another launcher wrote the same snapshot first
        shutil.rmtree(staging, ignore_errors=True)
    return snapshot


def _write_snapshot(repository: Path, staging: Path, snapshot: CodeSnapshot, diff: bytes,
                    untracked: list[str]) -> None:
    """The commit's files, the uncommitted changes applied, the untracked files copied, and code.json."""
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
    record = {"commit": snapshot.commit, "diff_digest": snapshot.diff_digest, "dirty": snapshot.dirty,
              "repository": str(repository), "left_out": [path for path, _ in snapshot.left_out]}
    (staging / CODE_RECORD).write_text(json.dumps(record, indent=2))


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
