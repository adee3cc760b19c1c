"""Parity: run a reference and candidates on the same seeded inputs and judge them by evidence.

``parity(ref, cand, …)`` loads what it is given (paths through :func:`load_runnable`, or ready
:class:`Runnable` objects), feeds both the same input sets (see :mod:`.inputs`), compares every
output (see :mod:`.metrics`), language models also by tokens and greedy generation, and, for a
candidate that fails, names the first block whose output differs (see :mod:`.layers`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelportError, UnsupportedError
from ..models.runnable import CAUSAL_LM, Runnable
from ..models.spec import LoadSpec
from .calibrate import DEFAULT_FACTOR, can_calibrate, float_dtype_of, floors
from .coverage import check_rows
from .generate import follow
from .inputs import DEFAULT_BATCH, DEFAULT_SEQ_LENS, check_sizes, input_sets, max_positions
from .layers import first_divergence, script_prefix
from .metrics import (Tolerance, compare_generation, compare_tensors, dtype_name, least_precise, token_agreement,
                      tolerance)
from .reference import describe, record, release, settled
from .report import CandidateResult, Check, ParityReport

DEFAULT_NEW_TOKENS = 16


@dataclass(frozen=True)
class Deferred:
    """A model parity loads when it needs it and releases after: ``path`` opened as ``spec`` says (its format,
    architecture, config, engine …), on parity's device and at its dtype. Callers that would otherwise hold a
    loaded :class:`Runnable` (``convert --verify``) pass this, so only one model is in memory at a time."""
    path: Path
    spec: LoadSpec


def _path_of(model) -> Path | None:
    """The file a model is read from, before it is loaded (None for a ready :class:`Runnable`)."""
    if isinstance(model, Runnable):
        return None
    return Path(model.path) if isinstance(model, Deferred) else Path(model)


def resolve_device(device: str = "auto") -> str:
    """The torch device for ``auto | cpu | cuda``; ``cuda`` without a visible GPU is an error, never a
    silent CPU run."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnsupportedError(f"--device {device}: no CUDA device is visible to torch "
                                   "(torch.cuda.is_available() is false); use --device cpu or auto")
        return device
    if device != "cpu":
        raise UnsupportedError(f"--device {device}: choose auto, cpu or cuda")
    return device


def _load(model, *, torch_device, dtype, arch, config, input_shape, input_dtype, engine,
          assume_config) -> tuple[Runnable, float]:
    if isinstance(model, Runnable):
        return model, 0.0
    from ..models.runnable import load_runnable

    start = time.perf_counter()
    if isinstance(model, Deferred):
        r = load_runnable(model.path, model.spec.replace(device=torch_device, dtype=dtype))
    else:
        r = load_runnable(Path(model), arch=arch, config=config, device=torch_device, dtype=dtype,
                          input_shape=input_shape, input_dtype=input_dtype, engine=engine, assume_config=assume_config)
    return r, time.perf_counter() - start


def reference_engine(ref, engine: str, arch) -> str:
    """Who runs the reference: for a Hugging Face directory with ``engine="auto"``, transformers when it is
    installed (the reference of truth, whatever ``--config`` says about the candidates), modelport's reference
    family otherwise. The report's origin says."""
    if engine != "auto" or not isinstance(ref, (str, Path)) or (arch and ":" in arch):
        return engine
    import importlib.util

    from .. import formats

    if importlib.util.find_spec("transformers") is None:
        return engine
    try:
        is_hf = formats.detect(Path(ref)).id == "hf"
    except ModelportError:
        return engine              # load_runnable reports what is wrong with the path
    return "transformers" if is_hf else engine


def _reference_config(ref) -> Path | None:
    """The reference directory's ``config.json``, which bare candidates (weights with no config) borrow."""
    if not isinstance(ref, (str, Path)) or not Path(ref).is_dir():
        return None
    found = Path(ref) / "config.json"
    return found if found.is_file() else None


def _load_candidate(cand, borrowed: Path | None, load: dict) -> tuple[Runnable, float]:
    """A candidate as given; bare weights that need a config borrow the reference's, and say so."""
    from ..errors import ConfigNeededError

    try:
        return _load(cand, **load)
    except ConfigNeededError:
        if borrowed is None or load["config"] is not None or load["assume_config"]:
            raise
    r, seconds = _load(cand, **{**load, "config": borrowed})
    r.config_from = f"{borrowed} (the reference's, borrowed: the candidate carries no config)"
    return r, seconds


def _pairs(ref_out: dict, cand_out: dict):
    """(name, ref tensor, cand tensor) by output name, or by position when the names differ."""
    if all(n in cand_out for n in ref_out):
        return [(n, ref_out[n], cand_out[n]) for n in ref_out]
    return [(n, t, c) for (n, t), c in zip(ref_out.items(), cand_out.values())]


def _settling(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with settled():
            return fn(*args, **kwargs)
    return run


@_settling
def parity(ref, *candidates, device: str = "auto", dtype: str | None = None, atol: float | None = None,
           rtol: float | None = None, batch: int = DEFAULT_BATCH, seq_lens=DEFAULT_SEQ_LENS,
           new_tokens: int = DEFAULT_NEW_TOKENS, prompts=None, seed: int = 0, arch: str | None = None, config=None,
           input_shape=None, input_dtype=None, engine: str = "auto", assume_config: bool = False,
           locate: bool = True, ref_dtype: str | None = None, factor: float = DEFAULT_FACTOR,
           progress=None) -> ParityReport:
    """Check every candidate against ``ref``; the :class:`ParityReport` is true when all pass.

    ``ref`` and each candidate: a path (anything :func:`load_runnable` opens; ``arch`` / ``config`` /
    ``input_shape`` apply to each), a :class:`Deferred` path with its own load options, or a ready
    :class:`Runnable`. ``dtype`` casts the candidates (fp32/fp16/bf16),
    ``ref_dtype`` the reference; without them each runs as stored. A torch reference calibrates the
    tolerances on itself (see :mod:`.calibrate`, ``factor`` times its own rounding error); ``atol`` /
    ``rtol``, or a reference that cannot run in float64, use fixed tolerances instead. ``engine`` chooses
    who runs a Hugging Face directory (auto / reference / transformers; the report's origin says).
    ``progress``, if given, is called with a line per stage (the command shows them on a terminal).

    One model is in memory at a time: the reference runs first (see :mod:`.reference`) and, unless it was
    given as a :class:`Runnable` (which stays the caller's, in memory throughout), is released before the first
    candidate loads; each candidate is loaded, judged and released in turn.
    """
    import torch

    say = progress or (lambda line: None)

    if not candidates:
        raise UnsupportedError("parity needs at least one candidate to compare with the reference")
    if new_tokens < 0:
        raise UnsupportedError(f"--new-tokens {new_tokens}: cannot be negative")
    if not factor > 0:
        raise UnsupportedError(f"--factor {factor}: must be positive")
    torch_device = resolve_device(device)
    from .. import dtypes

    dtype = dtypes.canonical(dtype) if dtype is not None else None
    ref_dtype = dtypes.canonical(ref_dtype) if ref_dtype is not None else None
    on_gpu = torch_device.startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    load = dict(torch_device=torch_device, dtype=dtype, arch=arch, config=config, input_shape=input_shape,
                input_dtype=input_dtype, engine=engine, assume_config=assume_config)
    ref_engine = reference_engine(ref, engine, arch)
    ref_load = {**load, "dtype": ref_dtype, "engine": ref_engine,
                "config": None if ref_engine == "transformers" else config}
    given = atol is not None or rtol is not None
    expected = candidate_precisions(candidates, dtype)     # read from the files before the reference loads
    say(f"reference: loading {_path_of(ref)}" if _path_of(ref) else "reference: ready")
    ref_r, ref_load_s = _load(ref, **ref_load)
    is_lm = ref_r.kind == CAUSAL_LM and "logits" in ref_r.outputs
    n_new = new_tokens if is_lm else 0
    check_sizes(ref_r, batch=batch, seq_lens=seq_lens if prompts is None else (), new_tokens=n_new,
                explicit=seq_lens is not DEFAULT_SEQ_LENS)
    longest = max_positions(ref_r)
    if longest is not None and n_new > longest // 2:     # a short position table: room for prompts too
        n_new = longest // 2
    sets = input_sets(ref_r, batch=batch, seq_lens=seq_lens, seed=seed, prompts=prompts, reserve=n_new)
    gen_set = next((s for s in sets if s.seq_len > 1), sets[0])
    calibrating = can_calibrate(ref_r) and not given
    own = float_dtype_of(ref_r.module) if calibrating else None
    lower = [d for d in expected if own and least_precise(d, own) == d and d != own]
    rec, recorder = record(ref_r, sets, gen_set=gen_set, new_tokens=n_new, calibrating=calibrating, lower=lower,
                           locate=locate and not calibrating, say=say)   # calibrated: see _locate
    rec.seconds["load"] = ref_load_s
    caller_ref = ref_r if isinstance(ref, Runnable) else None      # the caller's to keep; ours are released
    del ref_r
    if caller_ref is None:
        release()
        say("reference: released (its outputs are kept)")
    again = _Again(ref, caller_ref, ref_load, say)
    results = []
    for i, cand in enumerate(candidates, 1):
        tag = f"candidate {i}/{len(candidates)}"
        say(f"{tag}: loading {_path_of(cand) or cand.origin}")
        cand_r, cand_load = _load_candidate(cand, _reference_config(ref), load)
        if cand_r.kind != rec.kind:
            raise UnsupportedError(f"{cand_r.path or cand_r.origin}: a {cand_r.kind} model cannot be compared with the "
                                   f"reference, a {rec.kind} model")
        result = _judge(rec, recorder, again, cand_r, sets, gen_set, n_new, is_lm, atol, rtol, factor, seed, tag, say)
        result.seconds["load"] = cand_load
        if locate and not result.passed:
            say(f"{tag}: differs; locating the first divergent layer")
            start = time.perf_counter()
            index = next((k for k, s in enumerate(sets) for c in result.comparisons
                          if c.inputs == s.label and not c.passed), sets.index(gen_set))
            _locate(result, rec, again, cand_r, sets[index].feeds, index, factor if calibrating else None)
            result.seconds["locate"] = time.perf_counter() - start
        results.append(result)
        say(f"{tag}: {'pass' if result.passed else 'FAIL'}")
        del cand_r
        if not isinstance(cand, Runnable):
            release()
    peak = torch.cuda.max_memory_allocated() if on_gpu else None
    return ParityReport(rec.describe, results, device, torch_device, seed, [s.describe() for s in sets], n_new,
                        peak, rec.seconds)


def candidate_precisions(candidates, dtype: str | None) -> list[str]:
    """The floating precisions the candidates are expected to run at, read cheaply (a lazy look at the files'
    tensors, a ready model's parameters or session outputs), so the reference runs at each before it is released.
    A guess that turns out wrong costs one more load of the reference (see :class:`_Again`), never a wrong verdict."""
    from .. import formats
    from .metrics import _PRECISION

    if dtype is not None:
        return [dtype]
    found: list[str] = []
    for cand in candidates:
        seen: set[str] = set()
        try:
            if isinstance(cand, Runnable):
                if cand.backend == "onnxruntime" and hasattr(cand.module, "get_outputs"):
                    from ..models.graph import ORT_TYPES

                    seen = {ORT_TYPES.get(o.type, "") for o in cand.module.get_outputs()}
                elif cand.module is not None and hasattr(cand.module, "parameters"):
                    seen = {dtype_name(t) for t in cand.module.parameters() if t.is_floating_point()}
            else:
                fmt = cand.spec.format if isinstance(cand, Deferred) else None
                with formats.open(_path_of(cand), fmt) as source:
                    seen = {source.info(n).dtype for n in source.names()}
        except (ModelportError, OSError, ImportError, ValueError):
            continue
        low = [d for d in seen if d in _PRECISION]
        if low:
            found.append(least_precise(*low))
    return list(dict.fromkeys(found))


class _Again:
    """The reference once more, for what was not kept (a precision no candidate was expected at, the layer search
    against a reference that is not an eager torch module): the caller's model as given, or loaded again from its
    path and released after use."""

    def __init__(self, ref, caller_ref, load: dict, say):
        self.ref, self.caller_ref, self.load, self.say = ref, caller_ref, load, say

    @contextlib.contextmanager
    def __call__(self, why: str):
        if self.caller_ref is not None:
            yield self.caller_ref
            return
        self.say(f"reference: loading again ({why})")
        r, _ = _load(self.ref, **self.load)
        try:
            yield r
        finally:
            del r
            release()


def _judge(rec, recorder, again, cand_r, sets, gen_set, n_new, is_lm, atol, rtol, factor, seed, tag, say):
    """One candidate's outputs, tokens, generation and embedding rows against the reference's record."""
    start = time.perf_counter()
    say(f"{tag}: running {len(sets)} input sets" + (f" and {n_new} greedy tokens" if n_new else ""))
    cand_outs = [cand_r.run(s.feeds) for s in sets]
    float_dtypes = [dtype_name(t) for o in (rec.outputs[0], cand_outs[0]) for t in o.values() if t.is_floating_point()]
    low = least_precise(*float_dtypes)
    tol = tolerance(low, atol, rtol)
    tols, against = {}, rec.outputs
    if rec.hi is not None:
        if low not in rec.at:
            with again(f"to run it in {low}, {tag}'s precision") as r:
                recorder.add_precision(r, rec, low)
        fl = floors(rec.hi, rec.at[low], [s.mask for s in sets], low, factor)
        tols = {n: Tolerance(f.allowed, 0.0, low, floor=f.floor, factor=factor) for n, f in fl.items()}
        if tols:
            against = rec.hi
            tol = tols.get("logits") or next(iter(tols.values()))
    result = CandidateResult(describe(cand_r), tol)
    for s, ref_out, cand_out in zip(sets, against, cand_outs):
        pairs = _pairs(ref_out, cand_out)
        if len(pairs) < len(ref_out):
            result.comparisons.append(_missing_output(ref_out, cand_out, s.label))
        for name, a, b in pairs:
            t = tols.get(name, tol)
            result.comparisons.append(compare_tensors(a, b, t, output=name, inputs=s.label, mask=s.mask))
            if is_lm and name == "logits" and a.shape == b.shape:
                result.tokens.append(token_agreement(a, b, t, inputs=s.label, mask=s.mask))
    del cand_outs
    if rec.generation is not None:
        result.generation = compare_generation(rec.generation, follow(cand_r, gen_set.feeds, rec.generation[0]), tol,
                                               inputs=gen_set.label)
    if rec.coverage is not None:
        say(f"{tag}: looking up every token id's embedding")
        result.coverage = check_rows(rec.coverage, cand_r)
    result.seconds = {"run": time.perf_counter() - start}
    return result


def _missing_output(ref_out, cand_out, label):
    from .metrics import TensorComparison

    c = TensorComparison("outputs", label, [], "", "", 0)
    c.problem = f"the candidate returns {len(cand_out)} outputs where the reference returns {len(ref_out)}"
    return c


def _adopt_buffers(into: Runnable, script: Runnable) -> None:
    """The script's own buffers (a rotary table is computed from its config, never loaded) in the eager model whose
    blocks' calls are replayed on it: each of its blocks is then fed the reference's hidden state with the
    candidate's own position inputs, as a graph's or an eager candidate's blocks are."""
    import torch

    theirs = dict(script.module.named_buffers())
    with torch.no_grad():
        for name, mine in into.module.named_buffers():
            t = theirs.get(name)
            if t is not None and t.shape == mine.shape and mine.is_floating_point() and t.is_floating_point():
                mine.copy_(t.to(mine.dtype))


def _locate(result: CandidateResult, rec, again, cand_r: Runnable, feeds, index: int, factor=None) -> None:
    """The first divergent block of a failing candidate. Calibrated, every block is fed the float64 reference's
    input (see :mod:`.isolate`), which needs the reference model: it is loaded again, beside the candidate,
    only for a candidate that failed. Otherwise against the per-module outputs the reference recorded on
    input set ``index`` when it was an eager torch model, else against the reference loaded again."""
    tol = result.tolerance
    cov = result.coverage
    if cov is not None and not cov.passed and all(c.passed for c in result.comparisons):
        from .layers import Divergence     # only the every-id lookup differs: the embedding is the place

        result.first_divergence = Divergence(None, cov.module, None, cov.max_abs, method="every-id lookup")
        return
    replay_from = None
    path = rec.describe.get("path")
    if cand_r.backend == "torchscript" and rec.describe.get("made_by") == "transformers" and path and not script_prefix(cand_r):
        from ..models.runnable import load_runnable     # the script's blocks take modelport's calling convention

        try:
            replay_from = load_runnable(Path(path), engine="reference", device=rec.describe.get("device", "cpu"))
            _adopt_buffers(replay_from, cand_r)
        except ModelportError:
            replay_from = None
    try:
        if rec.layers is not None:
            div = first_divergence(None, cand_r, feeds, tol, factor, replay_from, recorded=rec.layers[index])
        else:
            with again("for the layer search") as ref_r:
                div = first_divergence(ref_r, cand_r, feeds, tol, factor, replay_from)
    except ImportError as exc:       # onnx needed to read the graph's scopes
        result.divergence_note = f"reading the candidate's layers needs {exc.name}"
        return
    except Exception as exc:  # noqa: BLE001 - onnxruntime on the graph with block outputs added, a script's replay
        from ..models.runnable import is_ort_error, ort_message

        if not is_ort_error(exc):
            raise
        result.divergence_note = f"per-layer outputs unavailable: running the layers failed ({ort_message(exc)})"
        return
    finally:
        del replay_from
    if div is None:
        result.divergence_note = "no block names match between the two models (per-layer outputs unavailable)"
    result.first_divergence = div


__all__ = ["CandidateResult", "Check", "DEFAULT_NEW_TOKENS", "Deferred", "ParityReport", "parity", "reference_engine",
           "resolve_device"]
