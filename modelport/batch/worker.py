"""One batch job in a process of its own: ``python -m modelport.batch.worker JOB.json RESULT.json``.

The job becomes the :class:`~modelport.convert.request.ConvertRequest` the ``convert`` command would
build from the same arguments, run and reported as the command runs and reports it; what it
did (status, exit code, its one-line error, parity verdict and worst error, output size, peak memory)
is written to RESULT.json. A crash or a kill of this process fails this job alone: the pool reads a
missing result as the signal or exit code that ended it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import time
from pathlib import Path


def peak_rss() -> int | None:
    """This process's own peak resident memory in bytes (VmHWM: the high-water mark of its own address
    space, unlike ru_maxrss, which after exec still carries the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return None


def output_bytes(dst: Path) -> int | None:
    """Bytes of a written file (with its ONNX external data) or directory."""
    if dst.is_file():
        data = dst.with_name(dst.name + ".data")
        return dst.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    if dst.is_dir():
        return sum(p.stat().st_size for p in dst.rglob("*") if p.is_file() and not p.is_symlink())
    return None


def worst_error(parity: dict | None) -> float | None:
    """The largest absolute output difference a parity report's JSON records."""
    if not parity:
        return None
    worst = None
    for cand in parity.get("candidates") or []:
        for out in (cand or {}).get("outputs") or []:
            v = (out or {}).get("max_abs")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                worst = v if worst is None else max(worst, v)
    return worst


def run(job) -> dict:
    """Run ``job`` (a :class:`~modelport.batch.jobs.Job`) in this process; its result as JSON."""
    import click

    from ..atomic import interrupt
    from ..convert import VerifyFailed
    from ..errors import SPELLING, ModelportError
    from ..render import escape_lines, print_convert
    from .jobs import request_for

    result: dict = {"name": job.name, "status": "failed", "exit_code": 2, "error": None, "parity": None,
                    "worst_error": None, "output_bytes": None, "manifest": None}
    spelling = SPELLING.set("cli")
    out = io.StringIO()
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(out):
            request = request_for(job)
            try:
                done = request.run()
            except VerifyFailed as exc:
                click.echo(escape_lines(exc.report.to_text()))
                raise
            print_convert(done, request.src)
            interrupt.check()
        result.update(status="passed" if job.verify else "done", exit_code=0)
    except click.ClickException as exc:
        result["error"] = exc.format_message()
    except ModelportError as exc:
        report = getattr(exc, "report", None)
        if report is not None:
            result["parity"] = {"passed": bool(report), **report.to_json()}
        result.update(status="parity-failed" if exc.exit_code == 1 else "failed", exit_code=exc.exit_code,
                      error=" ".join(str(exc).split()))
    except KeyboardInterrupt:
        result.update(status="interrupted", exit_code=130, error="interrupted; nothing was written")
    except ModuleNotFoundError as exc:
        result["error"] = f"this job needs the package '{exc.name}', which is not installed"
    finally:
        SPELLING.reset(spelling)
    result["seconds"] = round(time.monotonic() - started, 3)
    result["log"] = out.getvalue().splitlines()[-20:]
    if result["exit_code"] == 0:
        result["output_bytes"] = output_bytes(job.dst)
        result.update(_recorded(job.dst))
    result["worst_error"] = worst_error(result["parity"])
    result["peak_rss"] = peak_rss()
    return result


def _recorded(dst: Path) -> dict:
    """The manifest the conversion wrote beside (or inside) its output, and its parity verdict."""
    from ..convert import manifest as mf

    found = mf.find(dst)
    if found is None:
        return {}
    try:
        data = mf.load(found)
    except Exception:      # a manifest this process just wrote; unreadable means none to report
        return {"manifest": str(found)}
    parity = data.get("parity") if isinstance(data, dict) else None
    return {"manifest": str(found), "parity": parity if isinstance(parity, dict) else None}


def main(argv: list[str]) -> int:
    from ..atomic import interrupt
    from .jobs import Job

    job_file, result_file = Path(argv[0]), Path(argv[1])
    interrupt.install(signal.SIGINT, signal.SIGTERM)
    job = Job.from_json(json.loads(job_file.read_text(encoding="utf-8")))
    result = run(job)
    tmp = result_file.with_name(result_file.name + ".tmp")
    tmp.write_text(json.dumps(result, default=str), encoding="utf-8")
    os.replace(tmp, result_file)
    return int(result["exit_code"])


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)      # no interpreter teardown: a finished job ends as it is, whatever threads remain
