"""``modelport batch``: convert and parity-check a list of jobs, each in a process of its own, from a
local pool or on a Ray cluster; results stream as jobs finish.

    report = modelport.batch.batch("jobs.yaml")                 # local pool, one worker per core
    report = modelport.batch.batch(jobs, ray="auto", resume=True)  # each job a Ray task
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable

from ..errors import UnsupportedError
from .jobs import Job, load_jobs
from .report import BatchReport

STATE_SUFFIX = ".modelport-batch.json"


def batch(jobs: str | os.PathLike | Iterable[Job], *, ray: str | bool | None = None, workers: int | None = None,
          resume: bool = False, fail_fast: bool = False, state: str | os.PathLike | None = None,
          on_result: Callable[[dict], None] | None = None) -> BatchReport:
    """Run every job; the :class:`BatchReport` is true when every job passed.

    ``jobs``: a jobs file (YAML or JSON) or :class:`Job` objects. ``ray``: None for the local pool of
    ``workers`` processes (default: one per core, fewer when memory is short), True or ``"local"`` for
    a local Ray, an address for an existing cluster. ``resume`` skips jobs whose output and manifest
    still verify and that ran with the same options (recorded in ``state``: by default
    ``.<jobs file>.modelport-batch.json`` beside the jobs file). ``on_result`` sees each row as its job ends.
    """
    from . import pool

    if isinstance(jobs, (str, os.PathLike)):
        path = Path(jobs)
        jobs = load_jobs(path)
        state = state if state is not None else path.with_name(f".{path.name}{STATE_SUFFIX}")
    jobs = list(jobs)
    if workers is not None and workers < 1:
        raise UnsupportedError(f"workers={workers}: at least 1")
    ledger = Ledger(Path(state)) if state is not None else None
    if resume and ledger is None:
        raise UnsupportedError("resume needs a state file (pass state=, or a jobs file)")
    results: dict[str, dict] = {}

    def done(result: dict) -> None:
        results[result["name"]] = result
        if ledger is not None and result.get("exit_code") == 0 and result["status"] in ("done", "passed"):
            job = by_name[result["name"]]
            ledger.record(job, result.get("manifest"))
        if on_result is not None:
            on_result(result)

    by_name = {j.name: j for j in jobs}
    if len(by_name) != len(jobs):
        raise UnsupportedError("two jobs have the same name; give each a unique 'name'")
    todo = []
    for job in jobs:
        why = ledger.still_valid(job) if resume and ledger is not None else None
        if why:
            done({"name": job.name, "status": "resumed", "exit_code": 0, "error": why, "src": str(job.src),
                  "dst": str(job.dst), "wall": 0.0})
        else:
            todo.append(job)
    started = time.monotonic()
    if ray:
        pool.run_ray(todo, None if ray in (True, "local", "auto") else str(ray), done, fail_fast, workers)
    else:
        pool.run_local(todo, workers or default_workers(), done, fail_fast)
    report = BatchReport([results[j.name] for j in jobs if j.name in results], "ray" if ray else "local",
                         time.monotonic() - started)
    return report


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Ledger:
    """What earlier runs of a batch finished: each job's fingerprint (its paths and options) and the
    sha256 of the manifest it wrote. A job is skipped on resume only when its fingerprint is the same,
    its manifest is byte for byte the one recorded, and the files that manifest lists hash as recorded."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = {}
        try:
            from ..formats._untrusted import read_json_file

            data = read_json_file(path, "batch state", limit=64 << 20) if path.is_file() else {}
        except Exception:      # an unreadable state file: nothing is resumed, every job runs again
            data = {}
        jobs = data.get("jobs") if isinstance(data, dict) else None
        if isinstance(jobs, dict):
            self.entries = {k: v for k, v in jobs.items() if isinstance(v, dict) and isinstance(v.get("manifest_sha256"), str)}

    def still_valid(self, job: Job) -> str | None:
        """Why ``job`` need not run again, or None."""
        from ..convert import manifest as mf

        entry = self.entries.get(job.fingerprint())
        found = mf.find(job.dst) if entry else None
        if found is None or _sha256(found) != entry["manifest_sha256"]:
            return None
        try:
            report = mf.verify(found, rerun=lambda rerun: None, source=job.src)
        except Exception:
            return None
        if not report or not report.files:
            return None
        return f"output and manifest verify ({len(report.files)} files hashed); same options"

    def record(self, job: Job, manifest: str | None) -> None:
        if manifest is None or not Path(manifest).is_file():
            self.entries.pop(job.fingerprint(), None)
        else:
            self.entries[job.fingerprint()] = {"name": job.name, "manifest_sha256": _sha256(Path(manifest))}
        # a temporary beside it, renamed over it (not atomic_output: committing an output ends a command's
        # interruptibility, and the batch goes on after each job)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"schema": "modelport.batch-state/1", "jobs": self.entries}, indent=1) + "\n",
                           encoding="utf-8")
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


__all__ = ["BatchReport", "Job", "batch", "load_jobs"]
