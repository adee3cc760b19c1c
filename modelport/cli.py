"""The ``modelport`` command: a thin layer over the Python API.

Exit codes: 0 success; 1 a comparison found a difference; 2 the input or arguments are wrong
(unreadable or corrupt file, unsupported conversion, refused unsafe content, destination exists);
130 interrupted; 141 the output was closed early (``modelport inspect … | head``): the command stops
quietly, with the code a shell reports for ``cat`` in that place (128 + SIGPIPE). Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import click

from ._version import __version__
from .console import parse_size, silence_stdout, stdout_closed, write_text_atomic
from .errors import ModelportError

def format_ids() -> list[str]:
    from . import formats

    return [f.id for f in formats.all_formats()]


class FormatChoice(click.ParamType):
    """A format id, checked against the registry when used (so --help needs no registry)."""

    name = "FORMAT"

    def convert(self, value, param, ctx):
        ids = format_ids()
        if value not in ids:
            self.fail(f"{value!r} is not a format; choose from {', '.join(ids)}", param, ctx)
        return value


class ArchOption(click.Option):
    """``--arch``: ``{archs}`` in its help becomes the registered families, read when the help is shown
    (so --help of other commands needs no registry)."""

    def get_help_record(self, ctx):
        from .models import known_archs

        template, self.help = self.help, self.help.replace("{archs}", ", ".join(known_archs()))
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = template


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelport")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Convert neural-network models between formats and check the conversion."""
    ctx.obj = {"debug": debug}


@cli.command("formats")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def formats_cmd(as_json: bool) -> None:
    """List every format and what modelport can do with it."""
    from . import formats

    from .models import known_archs

    archs = ", ".join(known_archs())
    rows = []
    for f in formats.all_formats():
        missing = f.missing()
        runs = []
        if f.runnable:
            runs.append("its Lua nn model, rebuilt as a torch.nn.Module")
        if f.can_read:    # any weights load into a reference model or the user's own module
            runs.append(f"weights of a known architecture ({archs}: detected, or --arch with --config) "
                        "or of your own module (--arch package.module:factory)")
        rows.append({"id": f.id, "read": f.can_read, "write": f.can_write, "runnable": bool(runs), "runs": "; ".join(runs),
                     "directory": f.directory, "suffixes": list(f.suffixes), "description": f.description,
                     "missing": missing})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        caps = "".join(c if ok else "-" for c, ok in (("r", r["read"]), ("w", r["write"]), ("x", r["runnable"])))
        where = "directory" if r["directory"] else " ".join(r["suffixes"]) or "-"
        line = f"{r['id']:<12} {caps}  {where:<22} {r['description']}"
        if r["missing"]:
            line += f"  [needs: pip install {' '.join(r['missing'])}]"
        click.echo(line)
    click.echo("\ncapabilities: r = read, w = write, x = runs (inspect --run, modelport.load_model): weights of a known "
               f"architecture ({archs}; detected from config.json, params.json or tensor names, or --arch), or your "
               "own module with --arch package.module:factory; t7 files holding a Lua nn model also rebuild it. "
               "Running needs torch.")


def _trust_torchscript(ctx, param, value):
    if value:
        from .formats.torchscript import trusted_torchscript

        ctx.with_resource(trusted_torchscript())
    return value


trust_torchscript_option = click.option(
    "--trust-torchscript", is_flag=True, expose_value=False, callback=_trust_torchscript,
    help="Run TorchScript files even when their code could read or write files (running a TorchScript file runs "
         "its code: trusted files only).")


def _input_shapes(ctx, param, value):
    """``--input-shape`` given once per input: None when absent, the shape when given once, else the
    tuple of shapes in input order (a gModule of several inputs: ``--input-shape 2,1 --input-shape 2,2``)."""
    if not value:
        return None
    return value[0] if len(value) == 1 else tuple(value)


def _options(**kw):
    from .formats.base import Options

    return Options(**{k: v for k, v in kw.items() if v is not None})


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--from", "from_", type=FormatChoice(), help="Read as this format instead of detecting it.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="List every tensor (default: the first 50).")
@click.option("--run", "run_model", is_flag=True, help="Also build the runnable model and run it once on an example input.")
@click.option("--arch", cls=ArchOption, help="With --run: architecture ({archs}) or your own package.module:factory.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --run: config.json for the model (or the kwargs of your factory).")
@click.option("--assume-config", is_flag=True, help="With --run on bare weights: accept guessed head counts, norm epsilon … .")
@click.option("--input-shape", metavar="DIMS", multiple=True, callback=_input_shapes,
              help="With --run: example input shape for non-LM models, e.g. 1,3,224,224; once per input for several.")
@click.option("--input-dtype", metavar="DTYPE", help="With --run: example input dtype (default float32).")
@click.option("--allow-expanded", is_flag=True, help="Accept views far larger than the bytes stored for them (trusted files only).")
@trust_torchscript_option
def inspect(path: Path, from_: str | None, as_json: bool, show_all: bool, run_model: bool, arch, config, assume_config,
            input_shape, input_dtype, allow_expanded) -> None:
    """Show what a checkpoint holds: tensors, totals, module tree, metadata, architecture."""
    from .inspect import inspect as run
    from .inspect import run_check

    from .convert import manifest as mf

    if not run_model:       # options that shape the run: without --run they would do nothing, so they are refused
        _refuse_without("--run", input_shape=input_shape, input_dtype=input_dtype, arch=arch, config=config,
                        assume_config=assume_config)
    summary = run(path, from_, _options(allow_expanded=allow_expanded or None))
    check = run_check(path, arch=arch, config=config, input_shape=input_shape, input_dtype=input_dtype, format=from_,
                      assume_config=assume_config) if run_model else None
    record, record_note = mf.read_with_note(path)
    if as_json:
        out = summary.to_json()
        if check is not None:
            out["run"] = check.to_json()
        if record is not None:
            out["manifest"] = record
        if record_note is not None:
            out["manifest_note"] = record_note
        click.echo(json.dumps(out, indent=2, default=str))
        return
    from .render import print_summary

    print_summary(summary, show_all)
    if record is not None:
        from .render import escape

        click.echo("")
        click.echo(escape(f"manifest ({mf.find(path)}):"))
        for line in mf.summary(record):
            click.echo(escape(f"  {line}"))
    elif record_note is not None:
        from .render import escape

        click.echo("")
        click.echo(escape(f"note: {record_note}"))
    if check is not None:
        click.echo(f"\nran {check.model}, {check.parameters:,} parameters: input {check.input} -> output "
                   f"{check.output}, {'all finite' if check.finite else 'NOT ALL FINITE'}")
        if check.assumed:
            click.echo(f"note: built with assumed values the weights do not reveal ({', '.join(check.assumed)}); "
                       "pass --config to state them")  # only with --assume-config, or values that change no output


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", type=FormatChoice(), help="Target format (default: from DST's suffix).")
@click.option("--from", "from_", type=FormatChoice(), help="Source format (default: detected from content).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), help="Cast floating-point tensors.")
@click.option("--allow-overflow", is_flag=True, help="Let values beyond the target dtype's range become ±inf.")
@click.option("--shard-size", metavar="SIZE", help="Largest shard of a sharded target, e.g. 5GB (default 5GB).")
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="config.json to write with an hf target (or to build a --arch module).")
@click.option("--assume-config", is_flag=True,
              help="hf target from bare weights: accept guessed values the weights do not reveal (head counts, norm "
                   "epsilon …); they are recorded in the output's metadata. Prefer --config.")
@click.option("--strip-prefix", metavar="PREFIX", help="Remove PREFIX (e.g. 'module.') from every tensor name.")
@click.option("--arch", cls=ArchOption, help="Architecture of bare weights ({archs}), used to infer an hf config.json.")
@click.option("--layout", help="Target layout, e.g. llama-meta or gpt2-nanogpt (default: what the target format uses).")
@click.option("--shards", type=click.IntRange(min=1), help="Model-parallel shards for a meta target (default 1).")
@click.option("--no-crc32", is_flag=True, help="pt target: write zero CRC-32s (torch.load accepts them; unzip -t does not).")
@click.option("--params-only", is_flag=True, help="t7 source: keep only an nn model's parameters.")
@click.option("--t7-mode", type=click.Choice(["binary", "ascii"]), help="t7 target: file mode (default binary).")
@click.option("--t7-long-size", type=click.Choice(["4", "8"]), help="t7 source: force the size of longs.")
@click.option("--t7-endian", type=click.Choice(["little", "big"]), help="t7 source: force the byte order.")
@click.option("--method", type=click.Choice(["script", "trace"]),
              help="torchscript target: script (default for modelport's reference models) or trace.")
@click.option("--opset", type=int, help="onnx target: opset 14-24 (default 17).")
@click.option("--exporter", type=click.Choice(["auto", "builder", "torch"]), default="auto", show_default=True,
              help="onnx target: builder (graph built from the family record: gpt2, llama, qwen2, gptneox; "
                   "weights streamed, no torch) or torch (torch.onnx tracing, any model); auto: builder when it "
                   "knows the family.")
@click.option("--kv-cache/--no-kv-cache", default=True, show_default=True,
              help="onnx builder: past_key_values inputs and present outputs (and genai_config.json beside DST); "
                   "--no-kv-cache: input_ids and attention_mask to logits only.")
@click.option("--static-shapes", is_flag=True, help="onnx target: fixed shapes instead of dynamic batch and sequence.")
@click.option("--external-data", is_flag=True, help="onnx target: tensors in DST.data beside the file (always over 2 GB).")
@click.option("--input-shape", metavar="DIMS", multiple=True, callback=_input_shapes,
              help="Graph targets: example input shape of non-LM models, e.g. 1,3,32,32; once per input for several.")
@click.option("--input-dtype", metavar="DTYPE", help="Graph targets: example input dtype (default float32).")
@click.option("--device", default="cpu", show_default=True, help="Graph targets: device to export and check on (cpu, cuda).")
@click.option("--engine", type=click.Choice(["auto", "reference", "transformers"]), default="auto", show_default=True,
              help="Graph targets from a Hugging Face directory: who builds the model (auto: modelport's reference "
                   "family when it knows the architecture, transformers otherwise).")
@click.option("--allow-expanded", is_flag=True, help="Accept views far larger than the bytes stored for them (trusted files only).")
@click.option("--no-manifest", is_flag=True,
              help="Write no DST.modelport.json (in a directory: DST/.modelport.json) recording what the conversion did.")
@click.option("--verify", is_flag=True, help="Run the written model against SRC (as `modelport parity` does) before "
              "declaring success; keep nothing when they differ (exit 1).")
@click.option("--view", "view_after", is_flag=True, help="Open the result in Netron when done (needs modelport[view]).")
@trust_torchscript_option
def convert(src, dst, to, from_, dtype, allow_overflow, shard_size, force, config, assume_config, strip_prefix, arch,
            layout, shards, no_crc32, params_only, t7_mode, t7_long_size, t7_endian, method, opset, exporter, kv_cache,
            static_shapes,
            external_data, input_shape, input_dtype, device, engine, allow_expanded, no_manifest, verify,
            view_after) -> None:
    """Convert SRC to DST, streaming tensor by tensor; nothing is written unless it all succeeds.

    A torchscript or onnx DST exports the runnable model SRC holds (see `modelport formats`)."""
    from .convert import VerifyFailed
    from .convert.request import ConvertRequest, UnusedOption
    from .render import escape_lines, print_convert

    request = ConvertRequest(
        src, dst, to=to, from_=from_, dtype=dtype, allow_overflow=allow_overflow,
        shard_size=parse_size(shard_size) if shard_size else None, force=force, config=config,
        assume_config=assume_config, strip_prefix=strip_prefix, arch=arch, layout=layout, shards=shards,
        no_crc32=no_crc32, params_only=params_only, t7_mode=t7_mode, t7_long_size=t7_long_size, t7_endian=t7_endian,
        method=method, opset=opset, exporter=exporter, kv_cache=kv_cache, static_shapes=static_shapes,
        external_data=external_data, input_shape=input_shape, input_dtype=input_dtype, device=device, engine=engine,
        allow_expanded=allow_expanded, no_manifest=no_manifest, verify=verify, view=view_after)
    try:
        request.target()
    except UnusedOption as exc:
        raise click.UsageError(str(exc)) from None
    if view_after:
        from .view import require

        require("netron", extra="view")
    try:
        result = request.run()
    except VerifyFailed as exc:
        click.echo(escape_lines(exc.report.to_text()))
        raise
    print_convert(result, src)
    if view_after:
        _serve(result.dst, "127.0.0.1", None, True, False, False)


def _refuse_without(needed: str, **given) -> None:
    """A usage error naming the first option given that only works with ``needed``."""
    for name, value in given.items():
        if value:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} applies only with {needed}, which was not given: add {needed} or drop {flag}")


def _serve(path, host, port, browser, graph_only, as_onnx, arch=None, config=None) -> None:
    from .view import view as run

    from .render import escape

    stopped_by = run(path, host=host, port=port, browser=browser, graph_only=graph_only, as_onnx=as_onnx, arch=arch,
                     config=config, echo=lambda line: click.echo(escape(line), err=line.startswith(("note:", "warning:"))))
    # stopped and cleaned up: a second Ctrl-C or SIGTERM on the way out changes nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if stopped_by is not None:      # Ctrl-C or SIGTERM: interrupted, as every command (it printed "stopped")
        sys.exit(130)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on (one that is not loopback is warned about: others can then read the model).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to serve on (default: a free one).")
@click.option("--no-browser", is_flag=True, help="Only print the URL; open no browser.")
@click.option("--graph-only", is_flag=True,
              help="ONNX: show the graph with shape-only weights (automatic above 1 GiB of weights).")
@click.option("--as-onnx", is_flag=True, help="Export a weights-only source to ONNX first and show its graph.")
@click.option("--arch", cls=ArchOption,
              help="With --as-onnx: architecture of bare weights ({archs}) or package.module:factory.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --as-onnx: config.json for bare weights (the values they do not reveal).")
def view(path, host, port, no_browser, graph_only, as_onnx, arch, config) -> None:
    """Show PATH in Netron (modelport[view]) on localhost until Ctrl-C."""
    if (arch or config) and not as_onnx:
        raise click.UsageError("--arch and --config build a model for --as-onnx; add --as-onnx or drop them")
    _serve(path, host, port, not no_browser, graph_only, as_onnx, arch, config)


@cli.command("verify")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--source", type=click.Path(exists=True, path_type=Path),
              help="The conversion's source, to check it too when it lies outside the manifest's directory.")
@click.option("--arch", cls=ArchOption,
              help="Run the recorded parity check with this architecture ({archs}) or your own package.module:factory "
                   "(a module the conversion used runs again only when named here).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="config.json for the recorded parity check (instead of the one recorded).")
@trust_torchscript_option
def verify_cmd(manifest, as_json, source, arch, config) -> None:
    """Check a conversion's MANIFEST (or the file/directory it describes): re-hash every file; exit 1 on a change."""
    from .convert import manifest as mf
    from .errors import DifferenceFound

    report = mf.verify(mf.locate(manifest), source=source, arch=arch, config=config)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        from .render import escape

        for f in report.files:
            state = "ok" if f.ok else "MISSING" if f.actual is None else "CHANGED"
            click.echo(escape(f"{state:<8} {f.role:<7} {f.path}"))
        if report.parity is not None:
            verdict = "passed" if report.parity.get("passed") else "FAILED"
            click.echo(f"parity: {verdict} (run again on the recorded seed and input shapes)")
        for note in report.notes:
            click.echo(f"note: {escape(note)}")
        click.echo(report.summary())
    if not report:
        raise DifferenceFound(f"{report.manifest}: the model no longer matches what the manifest records")


def _tolerance(ctx, param, value):
    """A tolerance is a finite number >= 0 (a negative one would fail every comparison, NaN pass or fail at random)."""
    import math

    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value} is not a tolerance; give a number >= 0, e.g. 1e-4")
    return value


@cli.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--atol", type=float, default=0.0, show_default=True, callback=_tolerance,
              help="Largest absolute difference counted as equal.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--from-a", type=FormatChoice(), help="Format of A (default: detected).")
@click.option("--from-b", type=FormatChoice(), help="Format of B (default: detected).")
@click.option("--cast", is_flag=True, help="Compare values across dtypes (after a --dtype conversion): a value that is "
              "exactly the other rounded to the less precise dtype is equal; others within --atol.")
@click.option("--allow-expanded", is_flag=True, help="Accept views far larger than the bytes stored for them (trusted files only).")
def diff(a, b, atol, as_json, from_a, from_b, cast, allow_expanded) -> None:
    """Compare A and B tensor by tensor; exit 1 when they differ."""
    from .diff import diff as run
    from .errors import DifferenceFound

    report = run(a, b, atol=atol, from_a=from_a, from_b=from_b, cast=cast,
                 options=_options(allow_expanded=allow_expanded or None))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        from .render import print_diff

        print_diff(report)
    if not report:
        hint = ""
        if report.differences and all(d.kind == "dtype" for d in report.differences):
            hint = " in dtype; --cast compares their values across dtypes (with --atol)"
        raise DifferenceFound(f"{a} and {b} differ{hint}")


def _seq_lens(ctx, param, value):
    try:
        lens = [int(x) for v in value for x in str(v).replace(",", " ").split()] if value else None
    except ValueError:
        raise click.BadParameter("sequence lengths are positive integers, e.g. --seq-len 1 --seq-len 8") from None
    if lens is not None and any(n < 1 for n in lens):
        raise click.BadParameter("sequence lengths are positive integers, e.g. --seq-len 1 --seq-len 8")
    return lens


@cli.command()
@click.argument("ref", type=click.Path(path_type=Path))
@click.argument("candidates", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where both models run; auto uses CUDA when a GPU is visible. cuda without one is an error.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), help="Run the candidates in this dtype "
              "(default: as stored); the reference keeps its own precision.")
@click.option("--ref-dtype", type=click.Choice(["fp32", "fp16", "bf16"]),
              help="Cast the reference too (default: as stored).")
@click.option("--factor", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Calibrated tolerance: how many times the reference's own rounding error a candidate may stray.")
@click.option("--atol", type=float, callback=_tolerance, help="Fixed absolute tolerance instead of the calibrated one.")
@click.option("--rtol", type=float, callback=_tolerance, help="Fixed relative tolerance instead of the calibrated one.")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True,
              help="Rows per input batch; the last row is left-padded.")
@click.option("--seq-len", "seq_lens", multiple=True, callback=_seq_lens, metavar="L",
              help="Sequence lengths to feed (repeat or comma-separate; default 1, 8, 32).")
@click.option("--new-tokens", type=click.IntRange(min=0), default=16, show_default=True,
              help="Greedy tokens to generate and compare (language models; 0 skips).")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Real prompts, one per line, through the reference's tokenizer instead of seeded ids.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--arch", cls=ArchOption, help="Architecture of bare weights ({archs}) or package.module:factory.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="config.json for models whose files carry none.")
@click.option("--input-shape", metavar="DIMS", multiple=True, callback=_input_shapes,
              help="Input shape of non-language models, e.g. 1,3,224,224; once per input for several.")
@click.option("--input-dtype", metavar="DTYPE", help="Input dtype of non-language models (default float32).")
@click.option("--engine", type=click.Choice(["auto", "reference", "transformers"]), default="auto", show_default=True,
              help="Who runs a Hugging Face directory (auto: modelport's reference family when it knows the "
                   "architecture, transformers otherwise); the report names which ran.")
@click.option("--assume-config", is_flag=True, help="Accept the values bare weights cannot reveal (else pass --config).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Also write the JSON report here.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path),
              help="Also write JUnit XML here (one test case per candidate and check).")
@trust_torchscript_option
def parity(ref, candidates, device, dtype, ref_dtype, factor, atol, rtol, batch, seq_lens, new_tokens, prompts, seed, arch, config,
           input_shape, input_dtype, engine, assume_config, as_json, report_path, junit_path) -> None:
    """Run REF and each CANDIDATE on the same inputs and compare outputs and tokens; exit 1 on a mismatch."""
    from .errors import DifferenceFound
    from .formats._untrusted import check_regular

    for path in (ref, *candidates):     # every path before loading any model (a reference can take minutes)
        check_regular(path, "model")
    from .parity import parity as run
    from .parity.inputs import DEFAULT_SEQ_LENS

    report = run(ref, *candidates, device=device, dtype=dtype, ref_dtype=ref_dtype, factor=factor, atol=atol,
                 rtol=rtol, batch=batch,
                 seq_lens=seq_lens or DEFAULT_SEQ_LENS, new_tokens=new_tokens, prompts=prompts, seed=seed, arch=arch,
                 config=config, input_shape=input_shape, input_dtype=input_dtype, engine=engine,
                 assume_config=assume_config, progress=_stage_printer())
    data = report.to_json()
    if report_path:
        write_text_atomic(report_path, json.dumps(data, indent=2, default=str) + "\n")
    if junit_path:
        write_text_atomic(junit_path, report.to_junit() + "\n")
    from .render import escape_lines

    click.echo(json.dumps(data, indent=2, default=str) if as_json else escape_lines(report.to_text()))
    if not report:
        failed = [c.model["path"] or c.model["origin"] for c in report.candidates if not c.passed]
        raise DifferenceFound(f"parity failed for {', '.join(map(str, failed))}")


def _stage_printer():
    """A line per stage on stderr when it is a terminal (parity's progress); None otherwise, so logs stay quiet."""
    if not sys.stderr.isatty():
        return None
    start = time.monotonic()
    return lambda line: click.echo(f"[{time.monotonic() - start:6.1f}s] {line}", err=True)


def _split_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` anywhere before ``--`` (before or after the sub-command), taken out of the arguments."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    return debug, [a for a in argv[:end] if a != "--debug"] + argv[end:]


INTERRUPTED = "modelport: interrupted; nothing was written"
CLOSED_OUTPUT = 141      # 128 + SIGPIPE, as a shell reports for `cat` writing into a closed pipe


from .batch.command import batch_cmd  # noqa: E402  (a command of its own module, registered here)

cli.add_command(batch_cmd)


# Optional packages -> the extra that installs them (pyproject.toml).
OPTIONAL_EXTRAS = {"torch": "torch", "transformers": "hf", "onnx": "cpu", "onnxruntime": "cpu"}


def main(argv: list[str] | None = None) -> None:
    from .atomic import interrupt
    from .errors import SPELLING

    interrupt.install(signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))
    spelling = SPELLING.set("cli")
    debug, args = _split_debug(list(sys.argv[1:] if argv is None else argv))
    try:
        try:
            # Not cli.main(): it prints a blank line on Ctrl-C before the message below.
            with cli.make_context("modelport", (["--debug"] if debug else []) + args) as ctx:
                cli.invoke(ctx)
            if sys.stdout is not None:
                sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
            interrupt.check()   # an interrupt something swallowed still fails the command
            interrupt.finish()
        except click.exceptions.Exit as exc:
            interrupt.check()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            raise KeyboardInterrupt from None
        except click.UsageError as exc:   # one line, as every error (click's own show() prints four)
            interrupt.check()
            from .render import escape

            command = exc.ctx.command_path if exc.ctx is not None else "modelport"
            message = " ".join(escape(exc.format_message()).split())
            click.echo(f"modelport: error: {message} (see '{command} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            interrupt.check()
            exc.show()
            sys.exit(exc.exit_code)
        except BrokenPipeError:
            if debug or not stdout_closed():
                raise
            silence_stdout()   # the reader has what it wanted (`| head`): stop quietly, as cat does
            sys.exit(CLOSED_OUTPUT)
        except ModelportError as exc:
            interrupt.check()
            if debug:
                raise
            from .render import escape

            kind = "error: " if exc.exit_code == 2 else ""
            click.echo(f"modelport: {kind}{escape(exc)}", err=True)
            sys.exit(exc.exit_code)
        except ModuleNotFoundError as exc:     # an optional package, imported where no check named it
            interrupt.check()
            if debug or exc.name not in OPTIONAL_EXTRAS:
                raise
            click.echo(f"modelport: error: this step needs the package '{exc.name}', which is not installed; "
                       f"install it with: pip install 'modelport[{OPTIONAL_EXTRAS[exc.name]}]'", err=True)
            sys.exit(2)
    except BaseException as exc:
        # An interrupt may surface as another error: a module whose import it cut short fails to load again.
        if not isinstance(exc, KeyboardInterrupt) and (interrupt.received() is None or isinstance(exc, SystemExit)):
            raise
        # As the process (argv None): exit at once, so a second Ctrl-C cannot print a traceback on the way out.
        interrupt.exit_interrupted(INTERRUPTED, now=argv is None)
    finally:
        SPELLING.reset(spelling)


if __name__ == "__main__":
    main()
