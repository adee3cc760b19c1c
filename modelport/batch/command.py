"""``modelport batch``: the command over :func:`modelport.batch.batch` (registered by :mod:`modelport.cli`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..console import write_text_atomic
from ..errors import ModelportError


@click.command("batch")
@click.argument("jobs_file", metavar="JOBS", type=click.Path(path_type=Path))
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run each job as a Ray task: on a local Ray, or on the cluster at ADDRESS (needs modelport[ray]).")
@click.option("--workers", type=click.IntRange(min=1), help="Jobs at once (default: one per core, fewer when memory is short).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole table as JSON.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the table as JSON to this file.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML: one test case per job.")
@click.option("--resume", is_flag=True, help="Skip jobs whose output and manifest still verify and that ran with the same options.")
@click.option("--fail-fast", is_flag=True, help="Start no new job once one has failed.")
def batch_cmd(jobs_file, ray_address, workers, as_json, report_path, junit_path, resume, fail_fast) -> None:
    """Convert (and parity-check) every job of JOBS, a YAML or JSON list, each job in a process of its own.

    Each job: src, dst, optional to, options (any convert option by its long name) and verify (true,
    or parity options). Exit 0 when every job passed, 1 when a parity check failed, 2 when a job could not run."""
    from . import batch, load_jobs
    from .report import line
    from ..errors import DifferenceFound
    from ..render import escape

    jobs = load_jobs(jobs_file)                    # every job checked before any runs
    total, seen = len(jobs), []
    live = _BatchProgress(total) if sys.stderr.isatty() and not as_json else None

    def show(result: dict) -> None:
        seen.append(result)
        text = escape(f"[{len(seen)}/{total}] {line(result)}")
        if live is not None:
            live.print(text)
        else:
            click.echo(text, err=as_json)

    try:
        report = batch(jobs, ray=ray_address, workers=workers, resume=resume, fail_fast=fail_fast,
                       state=jobs_file.with_name(f".{jobs_file.name}.modelport-batch.json"), on_result=show)
    except KeyboardInterrupt:
        finished = sum(r["status"] != "interrupted" for r in seen)
        click.echo(f"modelport: batch interrupted with {finished} of {total} jobs finished; running jobs were stopped "
                   "and left no partial output; run again with --resume to go on", err=True)
        raise
    finally:
        if live is not None:
            live.stop()
    data = report.to_json()
    if report_path:
        write_text_atomic(report_path, json.dumps(data, indent=2, default=str) + "\n")
    if junit_path:
        write_text_atomic(junit_path, report.to_junit() + "\n")
    click.echo(json.dumps(data, indent=2, default=str) if as_json else escape(report.summary()))
    if report.exit_code == 1:
        raise DifferenceFound(f"{jobs_file}: a parity check failed in {sum(r['exit_code'] == 1 for r in report.results)} job(s)")
    if report.exit_code:
        raise ModelportError(f"{jobs_file}: {sum(r['exit_code'] not in (0, 1) for r in report.results)} job(s) "
                             "could not run (see their lines above)")


class _BatchProgress:
    """A progress bar on a terminal, with each finished job's line printed above it."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.bar = Progress("jobs", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("jobs", total=total)
        self.bar.start()

    def print(self, text: str) -> None:
        self.bar.console.print(text, markup=False, highlight=False)
        self.bar.advance(self.task)

    def stop(self) -> None:
        self.bar.stop()
