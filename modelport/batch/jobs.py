"""The jobs file of ``modelport batch``: a YAML or JSON list of conversions, checked whole before any runs.

Each job is a mapping::

    - src: models/smol            # relative paths are relative to the jobs file
      dst: out/smol.onnx
      to: onnx                    # optional: else from dst's suffix, as ``convert`` does
      options: {opset: 17, dtype: fp16}   # any ``modelport convert`` option by its long name
      verify: true                # or parity options: {atol: 1e-4, seq_len: [8, 16], new_tokens: 8}
      timeout: 600                # optional: seconds before the job is stopped

A job's options mean what the same ``convert`` options mean on the command line: they are parsed
into the same :class:`~modelport.convert.request.ConvertRequest` the command builds, with the types of
the command's options (:data:`~modelport.convert.request.OPTIONS`), so an unknown option or a bad value
is refused before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, UnsupportedError

# convert options a batch may not set: the batch owns them (view needs a person, verify is the job's own key)
_NOT_IN_BATCH = {"view", "verify", "debug", "help"}
# parity options a job's ``verify`` mapping may set, as modelport.parity.parity() names them
PARITY_KEYS = {"atol": float, "rtol": float, "batch": int, "seq_lens": list, "new_tokens": int, "seed": int,
               "device": str, "engine": str, "dtype": str}
_PARITY_ALIASES = {"seq_len": "seq_lens"}
_JOB_KEYS = {"src", "dst", "to", "options", "verify", "timeout", "name"}
MAX_JOBS = 100_000
MAX_FILE_BYTES = 16 << 20


@dataclass(frozen=True)
class Job:
    """One conversion of a batch, its paths absolute."""

    name: str
    src: Path
    dst: Path
    to: str | None = None
    options: dict[str, Any] = field(default_factory=dict)   # long option name (dashes) -> value
    verify: bool | dict = False
    timeout: float | None = None

    def argv(self) -> list[str]:
        """The ``modelport convert`` arguments of this job (without --verify: the worker sets it)."""
        args = [str(self.src), str(self.dst)]
        if self.to:
            args += ["--to", self.to]
        for name, value in self.options.items():
            if value is True:
                args.append(f"--{name}")
            elif value is False and _DEFAULT_ON.get(name):
                args.append(f"--no-{name}")         # a flag that is on unless turned off (--no-kv-cache)
            elif value is False or value is None:
                continue
            else:
                args += [f"--{name}", str(value)]
        return args

    def fingerprint(self) -> str:
        """What makes two runs of this job the same job (for ``--resume``)."""
        data = {"src": str(self.src), "dst": str(self.dst), "to": self.to, "options": self.options,
                "verify": self.verify}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def to_json(self) -> dict:
        return {"name": self.name, "src": str(self.src), "dst": str(self.dst), "to": self.to,
                "options": self.options, "verify": self.verify, "timeout": self.timeout}

    @classmethod
    def from_json(cls, data: dict) -> "Job":
        return cls(data["name"], Path(data["src"]), Path(data["dst"]), data.get("to"), dict(data.get("options") or {}),
                   data.get("verify", False), data.get("timeout"))


def load_jobs(path: str | Path) -> list[Job]:
    """The jobs of a YAML (``.yaml``/``.yml``) or JSON jobs file, every one checked."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise FormatError(f"{path}: a jobs file of {path.stat().st_size} bytes is too large (at most 16 MB)")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read the jobs file ({getattr(exc, 'strerror', None) or exc})") from exc
    data = _parse(path, text)
    if isinstance(data, dict) and "jobs" in data:
        data = data["jobs"]
    if not isinstance(data, list) or not data:
        raise FormatError(f"{path}: a jobs file holds a non-empty list of jobs (or {{jobs: [...]}})")
    if len(data) > MAX_JOBS:
        raise FormatError(f"{path}: {len(data)} jobs; at most {MAX_JOBS} in one file")
    jobs = [check_job(raw, i, path.parent, where=str(path)) for i, raw in enumerate(data)]
    seen: dict[Path, str] = {}
    for job in jobs:
        if job.dst in seen:
            raise FormatError(f"{path}: jobs {seen[job.dst]!r} and {job.name!r} both write {job.dst}")
        seen[job.dst] = job.name
    return jobs


def _parse(path: Path, text: str):
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:
            raise UnsupportedError(f"{path}: reading YAML needs PyYAML: pip install pyyaml "
                                   "(or write the jobs file as JSON)") from None
        try:
            return yaml.safe_load(text)        # plain data only: no tags that build Python objects
        except yaml.YAMLError as exc:
            raise FormatError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    from ..formats._untrusted import load_json

    return load_json(text, path, "jobs file")


def check_job(raw: Any, index: int, base: Path, where: str = "jobs") -> Job:
    """One job from its mapping; any mistake names the job and the field."""
    if not isinstance(raw, dict):
        raise FormatError(f"{where}: job {index + 1} is not a mapping with src and dst")
    name = raw.get("name", f"job {index + 1}")
    if not isinstance(name, str) or not name.strip():
        raise FormatError(f"{where}: job {index + 1}: 'name' must be a non-empty string")
    label = f"{where}: job {name!r}" if "name" in raw else f"{where}: job {index + 1}"
    unknown = sorted(set(raw) - _JOB_KEYS)
    if unknown:
        raise FormatError(f"{label}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(_JOB_KEYS))})")
    for key in ("src", "dst"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise FormatError(f"{label}: field {key!r} must be a path")
    to = raw.get("to")
    if to is not None and not isinstance(to, str):
        raise FormatError(f"{label}: field 'to' must be a format name")
    options = _check_options(raw.get("options") or {}, label, base)
    verify = _check_verify(raw.get("verify", False), label)
    timeout = raw.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 1e7):
        raise FormatError(f"{label}: field 'timeout' must be a number of seconds above 0")
    job = Job(name, _resolve(base, raw["src"]), _resolve(base, raw["dst"]), to, options, verify,
              float(timeout) if timeout is not None else None)
    _check_with_convert(job, label)
    return job


def _resolve(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else (base / p).absolute()


def _check_options(options: Any, label: str, base: Path) -> dict[str, Any]:
    from ..convert.request import OPTIONS

    if not isinstance(options, dict):
        raise FormatError(f"{label}: field 'options' must be a mapping of convert options")
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = str(key).lstrip("-").replace("_", "-")
        if name not in OPTIONS or name in _NOT_IN_BATCH:
            hint = " (use the job's 'verify' field)" if name == "verify" else ""
            raise FormatError(f"{label}: options: {key!r} is not a convert option a batch can set{hint}")
        kind = OPTIONS[name][1]
        if kind == "flag":
            if not isinstance(value, bool):
                raise FormatError(f"{label}: options: {key!r} is a flag: true or false")
        elif isinstance(value, (dict, list)) or value is None:
            raise FormatError(f"{label}: options: {key!r} takes one value, not {type(value).__name__}")
        elif kind == "file" and isinstance(value, str):
            value = str(_resolve(base, value))
        out[name] = value
    return out


def _check_verify(verify: Any, label: str) -> bool | dict:
    if isinstance(verify, bool):
        return verify
    if not isinstance(verify, dict):
        raise FormatError(f"{label}: field 'verify' is true, false or a mapping of parity options")
    out: dict[str, Any] = {}
    for key, value in verify.items():
        name = _PARITY_ALIASES.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        kind = PARITY_KEYS.get(name)
        if kind is None:
            raise FormatError(f"{label}: verify: {key!r} is not a parity option (one of: "
                              f"{', '.join(sorted(PARITY_KEYS))})")
        if name == "seq_lens":
            value = [value] if isinstance(value, int) and not isinstance(value, bool) else value
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 20 for v in value):
                raise FormatError(f"{label}: verify: {key!r} takes positive integer lengths")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise FormatError(f"{label}: verify: {key!r} must be a number at least 0")
            value = float(value)
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 1 << 20:
                raise FormatError(f"{label}: verify: {key!r} must be a whole number at least 0")
        elif not isinstance(value, str):
            raise FormatError(f"{label}: verify: {key!r} must be a string")
        out[name] = value
    return out or True


def _check_with_convert(job: Job, label: str) -> None:
    """Parse the job's arguments as the convert command parses its command line."""
    import click

    try:
        request_for(job)
    except click.ClickException as exc:
        raise FormatError(f"{label}: {exc.format_message()}") from None


def request_for(job: Job):
    """The :class:`~modelport.convert.request.ConvertRequest` of ``job`` (its ``verify`` included),
    its arguments parsed with the types of the convert command's options; a bad one raises click's
    usage error, worded as the command words it."""
    from ..console import parse_size
    from ..convert.request import ConvertRequest

    with _command().make_context("convert", job.argv()) as ctx:
        params = dict(ctx.params)
        if params.get("shard_size") is not None:
            params["shard_size"] = parse_size(params["shard_size"])
    return ConvertRequest(**params, verify=job.verify)


_DEFAULT_ON = {"kv-cache": True}


def _command():
    """A click command with the convert command's arguments and options (types, choices, ranges)."""
    import click

    from ..convert.request import OPTIONS, ConvertRequest

    defaults = {f.name: f.default for f in dataclasses.fields(ConvertRequest)}
    params: list = [click.Argument(["src"], type=click.Path(path_type=Path)),
                    click.Argument(["dst"], type=click.Path(path_type=Path))]
    for name, (field_name, kind, arg) in OPTIONS.items():
        if name in _NOT_IN_BATCH:
            continue
        if kind == "flag":
            decls = [f"--{name}/--no-{name}" if _DEFAULT_ON.get(name) else f"--{name}", field_name]
            params.append(click.Option(decls, is_flag=True, default=defaults[field_name]))
            continue
        kind_type = {"choice": lambda: click.Choice(arg), "int": lambda: click.IntRange(min=arg) if arg else click.INT,
                     "file": lambda: click.Path(exists=True, dir_okay=False, path_type=Path),
                     "format": _format_type}.get(kind, lambda: click.STRING)()
        params.append(click.Option([f"--{name}", field_name], type=kind_type, default=defaults[field_name]))
    return click.Command("convert", params=params)


def _format_type():
    import click

    class FormatType(click.ParamType):
        name = "FORMAT"

        def convert(self, value, param, ctx):
            from .. import formats

            ids = [f.id for f in formats.all_formats()]
            if value not in ids:
                self.fail(f"{value!r} is not a format; choose from {', '.join(ids)}", param, ctx)
            return value

    return FormatType()
