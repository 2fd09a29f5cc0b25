"""The `sandbox` fixture: the one-node SLURM of `make slurm-up` (slurm/sandbox/sandbox.sh), and what the
tests marked `slurm` ask of it (job states from scontrol and sacct, requeued jobs started at once).

Without a running sandbox those tests skip, naming why; with REQUIRE_SLURM=1 (.ci/run) a skip is a failure.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from slurm.executors import ClusterConfig, load_cluster_config

REPOSITORY = Path(__file__).resolve().parents[2]
PROFILE = REPOSITORY / "slurm" / "sandbox" / "profile.yaml"
SANDBOX = "sandbox"  # the sandbox's partition and account
NEVER = "DependencyNeverSatisfied"  # the reason of a job whose afterok dependency failed: it will never start
ENDED = {NEVER, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}


def _command(*arguments: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(arguments, capture_output=True, text=True, timeout=timeout)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """REQUIRE_SLURM=1: a test marked slurm that skips fails instead (CI must not pass without SLURM)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("REQUIRE_SLURM") == "1" and item.get_closest_marker("slurm"):
        report.outcome = "failed"
        report.longrepr = f"REQUIRE_SLURM=1 but the test skipped: {report.longrepr}"


class Sandbox:
    """The running sandbox, through SLURM's own commands. The jobs a test waits for are cancelled when
    it ends (`tracked`), so that a failed test leaves no job running into the next."""

    def __init__(self):
        self.tracked: set[str] = set()

    def cluster(self, *settings: str) -> ClusterConfig:
        """Launcher settings for the sandbox (its profile: partition, account, a core and 2 GB per task)."""
        return load_cluster_config(str(PROFILE), list(settings))

    def submitted(self, outcome: dict[str, str]) -> dict[str, str]:
        """{stage key: job id} of the stages a launch submitted (tracked: cancelled when the test ends)."""
        jobs = {key: what.split()[1] for key, what in outcome.items() if what.startswith("submitted")}
        self.tracked.update(jobs.values())
        return jobs

    def show(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as {field: value}; {} once the controller has forgotten the job."""
        shown = _command("scontrol", "show", "job", "-o", str(job_id))
        return dict(re.findall(r"(\w+)=(\S*)", shown.stdout)) if shown.returncode == 0 else {}

    def attempts(self, job_id: str) -> list[dict[str, str]]:
        """Every attempt of the job as accounting recorded it (a requeued job has several), oldest first."""
        listed = _command("sacct", "-n", "-P", "-X", "--duplicates", "-j", str(job_id),
                          "-o", "JobID,State,Start,End,ExitCode")
        names = ("JobID", "State", "Start", "End", "ExitCode")
        return [dict(zip(names, line.split("|"))) for line in listed.stdout.splitlines() if line.strip()]

    def state(self, job_id: str) -> str:
        """The job's state from the controller, else from accounting ("" when neither knows it); a job
        pending on a dependency that can no longer be satisfied reads DependencyNeverSatisfied."""
        shown = self.show(job_id)
        state = shown.get("JobState", "")
        if state == "PENDING" and shown.get("Reason") == NEVER:
            return NEVER
        if not state:
            attempts = self.attempts(job_id)
            state = attempts[-1]["State"].split()[0] if attempts else ""
        return state

    def start_requeued_now(self, job_ids) -> None:
        """A requeued job waits about two minutes (its BeginTime) before it may start again: start it a few
        seconds after its requeue instead. Not at once: slurmd refuses a job whose credential is not
        newer than the revocation of its previous attempt's (whole seconds), and fails it."""
        for job_id in job_ids:
            shown = self.show(job_id)
            if shown.get("JobState") != "PENDING" or shown.get("Reason") != "BeginTime":
                continue
            requeued = datetime.datetime.strptime(shown["SubmitTime"], "%Y-%m-%dT%H:%M:%S")
            if (datetime.datetime.now() - requeued).total_seconds() >= 3:
                _command("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def wait(self, condition: Callable[[], bool], job_ids=(), timeout: float = 300, what: str = "") -> None:
        """Poll `condition` every half second, starting the listed jobs at once whenever they are requeued."""
        deadline = time.time() + timeout
        self.tracked.update(map(str, job_ids))
        while not condition():
            if time.time() > deadline:
                states = {job_id: self.show(job_id).get("JobState", "?") for job_id in job_ids}
                pytest.fail(f"timed out after {timeout:g} s waiting for {what or condition}; jobs {states}")
            self.start_requeued_now(job_ids)
            time.sleep(0.5)

    def wait_ended(self, job_ids, timeout: float = 300) -> dict[str, str]:
        """Wait until every job has ended; {job id: final state}."""
        job_ids = [str(job_id) for job_id in job_ids]
        self.wait(lambda: all(self.state(job_id) in ENDED for job_id in job_ids), job_ids, timeout,
                  f"jobs {job_ids} to end")
        return {job_id: self.state(job_id) for job_id in job_ids}

    def cancel(self, job_ids) -> None:
        if job_ids:
            _command("scancel", *map(str, job_ids))

    def restart_daemons(self) -> None:
        """Start again whichever sandbox daemon a test stopped (`up` starts only what is not running)."""
        started = _command(str(REPOSITORY / "slurm" / "sandbox" / "sandbox.sh"), "up", timeout=180)
        assert started.returncode == 0, started.stderr


def _why_no_sandbox() -> str:
    """"" when the sandbox answers; otherwise what is missing."""
    if shutil.which("sbatch") is None:
        return "SLURM's commands are not installed"
    try:
        partition = _command("sinfo", "-h", "-p", SANDBOX, "-o", "%T", timeout=30)
        account = _command("sacctmgr", "-n", "-P", "show", "account", SANDBOX, "format=account", timeout=30)
    except subprocess.TimeoutExpired:
        return "SLURM does not answer within 30 s"

    def said(done: subprocess.CompletedProcess) -> str:  # a command's last word on the matter
        return ((done.stderr or done.stdout).strip().splitlines() or ["nothing"])[-1]

    if partition.returncode or not re.search(r"idle|mixed|allocated", partition.stdout):
        return f"no partition '{SANDBOX}' with a node up (sinfo: {said(partition)})"
    if account.returncode or account.stdout.strip() != SANDBOX:
        return f"no account '{SANDBOX}' in SLURM's accounting (sacctmgr: {said(account)})"
    return ""


@pytest.fixture(scope="session")
def sandbox_session() -> Sandbox:
    why = _why_no_sandbox()
    if why:
        pytest.skip(f"no SLURM sandbox here: {why}; `make slurm-up` (as root) starts one")
    return Sandbox()


@pytest.fixture
def sandbox(sandbox_session) -> Sandbox:
    yield sandbox_session
    sandbox_session.cancel(sorted(sandbox_session.tracked))
    sandbox_session.tracked.clear()
