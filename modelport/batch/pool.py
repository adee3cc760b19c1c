"""Running jobs: each in a process of its own, from a local pool or as Ray tasks.

A job's process runs :mod:`.worker`; whatever ends it (an error, a crash, an out-of-memory kill, a
timeout) ends that job alone. The local pool starts a job when a worker slot is free and the memory
the running jobs are estimated to need leaves room for it; on Ray each job is a task asking for
that memory (and a GPU when it checks parity on CUDA).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from ..errors import MissingDependencyError, ModelportError
from .jobs import Job

_GRACE = 10.0           # seconds between SIGTERM and SIGKILL for a job that must stop
_POLL = 0.02


def source_bytes(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def memory_estimate(job: Job) -> int:
    """Bytes a job may hold at its peak: a weight conversion streams (about one tensor); an export or a
    parity check holds the model (twice, with the graph or the second side) and activations."""
    size = source_bytes(job.src)
    runs_model = bool(job.verify) or (job.to or job.dst.suffix.lstrip(".")) in ("onnx", "torchscript", "ts")
    return (3 * size + (768 << 20)) if runs_model else (size // 8 + (256 << 20))


def needs_gpu(job: Job) -> bool:
    device = str((job.verify if isinstance(job.verify, dict) else {}).get("device") or job.options.get("device") or "")
    return device.startswith("cuda")


# -- one job in its own process ------------------------------------------------------------

class JobProcess:
    """A started job: its worker process, its files, and how to read what it did."""

    def __init__(self, job: Job, workdir: Path):
        self.job, self.started = job, time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="job-", dir=workdir))
        (self.dir / "job.json").write_text(json.dumps(job.to_json()), encoding="utf-8")
        self.proc = _context().Process(target=_child, name=f"modelport-job {job.name}",
                                       args=(str(self.dir / "job.json"), str(self.dir / "result.json"),
                                             str(self.dir / "log.txt")))
        self.proc.start()
        self.stopped: str | None = None        # "timeout" or "interrupted" when the pool ended it
        self.stopped_at = 0.0

    def overdue(self) -> bool:
        return self.job.timeout is not None and time.monotonic() - self.started > self.job.timeout

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, why: str) -> None:
        """SIGTERM (the job removes its temporaries and exits 130); SIGKILL if it is still there after a grace period."""
        if self.proc.exitcode is not None or self.stopped:
            return
        self.stopped, self.stopped_at = why, time.monotonic()
        self.proc.terminate()

    def poll(self) -> int | None:
        code = self.proc.exitcode
        if code is None and self.stopped and time.monotonic() - self.stopped_at > _GRACE:
            self.proc.kill()
            self.proc.join()
            code = self.proc.exitcode
        return code

    def wait(self) -> int:
        self.proc.join(_GRACE if self.stopped else None)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join()
        return self.proc.exitcode

    def result(self) -> dict:
        code = self.wait()
        self.proc.close()
        wall = time.monotonic() - self.started
        path = self.dir / "result.json"
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = {"name": self.job.name, "status": "crashed", "exit_code": 2,
                      "error": _crash_text(code, self._last_log_line()), "parity": None, "worst_error": None,
                      "output_bytes": None, "peak_rss": None}
            _remove_partial(self.job.dst)
        if self.stopped == "timeout":
            result.update(status="timeout", exit_code=2,
                          error=f"stopped after its timeout of {self.job.timeout:g} s; nothing was written")
        result["wall"] = round(wall, 3)
        result.update(src=str(self.job.src), dst=str(self.job.dst))
        _rmtree(self.dir)
        return result

    def _last_log_line(self) -> str:
        try:
            lines = (self.dir / "log.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:500] if lines else ""


_CONTEXT = None


def _context():
    """Job processes are forked from a server that has imported the command (and torch, when installed)
    once: a job starts in milliseconds instead of a fresh interpreter's second, and is still a process
    of its own that nothing it does can take the batch down with."""
    global _CONTEXT
    if _CONTEXT is None:
        import importlib.util
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["modelport.batch.worker"] + (["torch"] if importlib.util.find_spec("torch") else []))
        _CONTEXT = ctx
    return _CONTEXT


def _child(job_file: str, result_file: str, log_file: str) -> None:
    """The job process: a session of its own (a terminal's Ctrl-C reaches the batch, which stops its jobs),
    output to its log, then the worker."""
    from . import worker

    os.setsid()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    code = worker.main([job_file, result_file])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)      # through multiprocessing's own exit: its finalisers release what the job's libraries held


def _crash_text(code: int, last: str) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        why = " (the kernel's out-of-memory killer sends this)" if -code == signal.SIGKILL else ""
        text = f"the job's process was killed by {name}{why}"
    else:
        text = f"the job's process ended with exit code {code} and no result"
    return text + (f"; last output: {last}" if last else "")


def _remove_partial(dst: Path) -> None:
    """A job killed mid-way leaves its temporary beside the destination; the next conversion there removes
    it too, but a batch cleans up after its own dead jobs at once."""
    from ..atomic import remove_stale_temps

    try:
        remove_stale_temps(dst)
    except (OSError, ModelportError):
        pass


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def run_one(job: Job) -> dict:
    """Run ``job`` in its own process and wait for it (what a Ray task does)."""
    with tempfile.TemporaryDirectory(prefix="modelport-batch-") as work:
        proc = JobProcess(job, Path(work))
        try:
            while proc.poll() is None:
                if proc.overdue():
                    proc.stop("timeout")
                time.sleep(_POLL * 5)
        except BaseException:
            proc.stop("interrupted")
            proc.wait()
            raise
        return proc.result()


# -- the local pool --------------------------------------------------------------------------

def run_local(jobs: Iterable[Job], workers: int, on_result: Callable[[dict], None], fail_fast: bool = False) -> None:
    """Run ``jobs`` at most ``workers`` at a time, within the memory available; ``on_result`` gets
    each result as its job ends. Ctrl-C or SIGTERM stops every running job (no partial outputs) and
    re-raises KeyboardInterrupt."""
    pending = list(jobs)
    running: list[JobProcess] = []
    from ..models.runnable import memory_budget

    budget = int(memory_budget() * 0.8)
    failed = False
    with tempfile.TemporaryDirectory(prefix="modelport-batch-") as work:
        try:
            while pending or running:
                while pending and len(running) < workers and not (fail_fast and failed):
                    need = memory_estimate(pending[0])
                    held = sum(memory_estimate(p.job) for p in running)
                    if running and held + need > budget:
                        break
                    running.append(JobProcess(pending.pop(0), Path(work)))
                if fail_fast and failed and not running:
                    break
                for proc in list(running):
                    if proc.overdue():
                        proc.stop("timeout")
                    if proc.poll() is not None:
                        running.remove(proc)
                        result = proc.result()
                        failed = failed or result["exit_code"] != 0
                        on_result(result)
                time.sleep(_POLL)
        except BaseException:
            for proc in running:
                proc.stop("interrupted")
            for proc in running:
                proc.wait()
                on_result(proc.result())
            raise
        for job in pending:        # --fail-fast: what never started
            on_result({"name": job.name, "status": "skipped", "exit_code": 0, "error": "not run: an earlier job failed",
                       "src": str(job.src), "dst": str(job.dst), "wall": 0.0})


# -- Ray -----------------------------------------------------------------------------------------

def _ray_task(job_data: dict) -> dict:
    """What a Ray task runs: the job in its own process on that node, after checking the node sees its files."""
    import socket

    job = Job.from_json(job_data)
    node = socket.gethostname()
    if not job.src.exists():
        return {"name": job.name, "status": "failed", "exit_code": 2, "src": str(job.src), "dst": str(job.dst),
                "error": f"{job.src}: the job's source is not on node {node}; put models and outputs on storage "
                         "every node of the cluster sees", "wall": 0.0}
    return run_one(job)


def run_ray(jobs: Iterable[Job], address: str | None, on_result: Callable[[dict], None],
            fail_fast: bool = False, workers: int | None = None) -> None:
    """Each job a Ray task (``address``: an existing cluster, or None for a local Ray, started here
    unless this process already started one)."""
    try:
        import ray
    except ModuleNotFoundError:
        raise MissingDependencyError("--ray needs Ray: pip install 'modelport[ray]'") from None
    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers or os.cpu_count(), **kwargs)
        started = True
    task = ray.remote(max_retries=0)(_ray_task)
    refs = {}
    try:
        for job in jobs:
            options = {"num_cpus": 1, "memory": memory_estimate(job)}
            if needs_gpu(job):
                options["num_gpus"] = 1
            refs[task.options(**options).remote(job.to_json())] = job
        remaining = list(refs)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            for ref in done:
                job = refs[ref]
                try:
                    result = ray.get(ref)
                except Exception as exc:      # the task itself died (node lost, worker killed)
                    result = {"name": job.name, "status": "crashed", "exit_code": 2, "src": str(job.src),
                              "dst": str(job.dst), "error": f"the Ray task failed: {' '.join(str(exc).split())[:500]}"}
                on_result(result)
                if fail_fast and result["exit_code"] != 0:
                    for r in remaining:
                        ray.cancel(r)
                        on_result({"name": refs[r].name, "status": "skipped", "exit_code": 0, "src": str(refs[r].src),
                                   "dst": str(refs[r].dst), "error": "not run: an earlier job failed", "wall": 0.0})
                    remaining = []
    except BaseException:
        for r in refs:
            ray.cancel(r)       # KeyboardInterrupt in the task: its job process is stopped and cleans up
        raise
    finally:
        if started:
            ray.shutdown()
