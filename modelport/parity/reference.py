"""The reference's side of a parity check, computed once and kept, so the reference model is released
before any candidate is loaded: peak memory is the larger model plus activations, not the sum.

:func:`record` runs the reference on every input set and keeps what the candidates are judged by: its
outputs at its own precision, its greedy tokens, its float64 run (the calibration's exact side) and its
run at each lower precision a candidate will be checked at, every token id's embedding row, and the
per-module outputs the layer search with fixed tolerances compares (see :class:`.layers.Recorded`).

Precision changes never copy the model: :func:`streamed` casts each module's own parameters and buffers
just before that module runs, into one buffer the size of the largest module's copies, and puts the
originals back right after, so beside the model there is about one module's cast copy (a float64 run of a
13.5 GB float16 model needs the largest module in float64, not 54 GB). TorchScript modules, whose
submodules run without Python hooks, are cast whole.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from ..models.runnable import CAUSAL_LM, ENCODER, Runnable


def trim() -> None:
    """glibc's free heap given back to the system: freed blocks that long-lived tensors (recorded activations)
    keep from the top of the heap otherwise stay in the process (SmolLM2-135M: 980 MB more at the peak of its
    float64 run, when each module's cast copies were allocated and freed at every call, before :class:`_Slab`)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_settled = [0]       # depth of settled() blocks
_M_ARENA_MAX = -8    # mallopt's parameter (malloc.h)


@contextlib.contextmanager
def settled():
    """Memory kept in order while parity runs:

    - objects that lived before the block, and those that outlive each :func:`release` in it, are left out of the
      garbage collector's full passes (``gc.freeze``; back to normal when the outermost block ends). A model's
      cycles are freed only by a full pass, which otherwise walks every object of torch and transformers as well
      (SmolLM2 in transformers: 0.22-0.25 s a pass over 368,000 objects; 0.12 s over those made after the imports;
      about nothing once what outlived the reference is set aside);
    - glibc's malloc keeps to one arena (``M_ARENA_MAX`` 1, which glibc keeps for the rest of the process once a
      thread has asked for an arena). With an arena per thread, an ONNX candidate's session took 250 MB more in
      about half the runs after greedy generation had run in threads of its own (SmolLM2: a parity peak of
      1460 MB against 1300 MB; 1295 MB in every run with one arena, no slower)."""
    import gc

    _settled[0] += 1
    _mallopt(_M_ARENA_MAX, 1)
    gc.freeze()
    try:
        yield
    finally:
        _settled[0] -= 1
        if not _settled[0]:
            gc.unfreeze()


def _mallopt(param: int, value: int) -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except (OSError, AttributeError):      # not glibc
        pass


def release() -> None:
    """Return freed memory: Python's cycles collected, CUDA's cache emptied, and the free heap given back to the
    system (so a released model does not stay in the process's resident size). Inside :func:`settled`, what is
    still alive afterwards is set aside from later passes."""
    import gc

    gc.collect()
    if _settled[0]:
        gc.freeze()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    trim()


def describe(r: Runnable) -> dict:
    """What ran, for reports: :meth:`Runnable.describe` plus the providers a session really uses, the config
    values that were assumed, and where a borrowed config came from."""
    out = r.describe()
    if r.backend == "onnxruntime" and hasattr(r.module, "get_providers"):
        out["providers"] = list(r.module.get_providers())
    if r.assumed:
        out["assumed"] = list(r.assumed)
    if getattr(r, "config_from", None):
        out["config_from"] = r.config_from
    return out


def _eager(r: Runnable) -> bool:
    import torch

    return (r.backend in ("torch", "torchscript") and isinstance(r.module, torch.nn.Module)
            and not isinstance(r.module, torch.jit.ScriptModule))


def _own(module, target) -> list:
    """A module's own floating parameters and buffers not already at ``target``."""
    return [t for table in (module._parameters, module._buffers) for t in table.values()
            if t is not None and t.is_floating_point() and t.dtype != target]


def _uses(t) -> int | None:
    """How many references hold ``t``'s storage; None where this torch cannot tell."""
    import torch

    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else count(t.untyped_storage()._cdata)


class _Slab:
    """One buffer at the target dtype that modules' cast copies are taken from as from a stack (a module's copies
    are given back when it returns), sized to the largest module's: a forward allocates nothing per module, so
    it neither faults in fresh pages nor grows the heap at every call (SmolLM2's float64 pass: 0.2 s of copying
    against 0.7 s allocating, freeing and trimming). A copy that does not fit (a module running inside another
    that holds part of the slab) is allocated on its own; an output that still refers to the slab when its
    module returns (a view of a weight) keeps it, and a new slab is made for what follows."""

    def __init__(self, numel: int, dtype):
        self.numel, self.dtype, self.top = numel, dtype, 0
        self.buf = None

    def take(self, src):
        import torch

        n = src.numel()
        if self.buf is None and n <= self.numel:
            self.buf, self.top = torch.empty(self.numel, dtype=self.dtype, device=src.device), 0
            self.base = _uses(self.buf)
            if self.base is None:       # reuse cannot be made safe here: every copy on its own
                self.buf, self.numel = None, 0
        if self.buf is None or self.top + n > self.numel or self.buf.device != src.device:
            return src.to(self.dtype)
        out = self.buf[self.top:self.top + n].view(src.shape)
        out.copy_(src)
        self.top += n
        return out

    def give_back(self, mark: int) -> None:
        if self.buf is not None and _uses(self.buf) > self.base:   # something still refers to the copies
            self.buf = None
        self.top = mark


@contextlib.contextmanager
def streamed(r: Runnable, dtype: str):
    """``r`` running at ``dtype``, one module at a time (see the module's doc); exact both ways: the originals
    are put back, never cast back. A TorchScript module is cast whole (see :func:`.calibrate._cast`)."""
    from .. import dtypes
    from .calibrate import _cast

    if not _eager(r):
        with _cast(r, dtype) as rr:
            yield rr
        return
    target = dtypes.to_torch(dtype)
    owners = [m for m in r.module.modules() if _own(m, target)]
    slab = _Slab(max((sum(t.numel() for t in _own(m, target)) for m in owners), default=0), target)
    held: list[tuple[list, int]] = []

    def before(module, args):
        saved, mark = [], slab.top
        for t in _own(module, target):
            saved.append((t, t.data))
            t.data = slab.take(t.data)
        held.append((saved, mark))

    def after(module, args, out):
        saved, mark = held.pop()
        for t, data in saved:
            t.data = data
        slab.give_back(mark)

    handles = []
    for m in owners:
        handles += [m.register_forward_pre_hook(before), m.register_forward_hook(after, always_call=True)]
    try:
        yield r
    finally:
        for h in handles:
            h.remove()
        while held:                                  # a forward that raised half-way: originals back
            for t, data in held.pop()[0]:
                t.data = data
        slab.buf = None
        trim()


@contextlib.contextmanager
def recording(r: Runnable, names: list[str], inputs: bool = False):
    """Per-module outputs (and, if asked, positional inputs) of the first call of each named module while the
    block runs; yields ``(outputs, inputs, order)``, filled as modules run."""
    from .layers import _first_tensor, named_root

    outputs: dict[str, Any] = {}
    ins: dict[str, tuple] = {}
    order: list[str] = []
    modules = dict(named_root(r.module).named_modules())
    handles = []
    for name in names:
        if name not in modules:
            continue

        def hook(mod, args, out, name=name):
            t = _first_tensor(out)
            if t is not None and name not in outputs:
                outputs[name] = t.detach().cpu()
                order.append(name)
                if inputs:
                    ins[name] = tuple(a.detach() if hasattr(a, "detach") else a for a in args)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield outputs, ins, order
    finally:
        for h in handles:
            h.remove()


def _cpu(out: dict) -> dict:
    return {k: v.detach().cpu() for k, v in out.items()}


def _cast_feeds(feeds: dict, dtype: str) -> dict:
    from .. import dtypes

    t = dtypes.to_torch(dtype)
    return {k: v.to(t) if v.is_floating_point() else v for k, v in feeds.items()}


@dataclass
class ReferenceRecord:
    """Everything the candidates are judged by, kept after the reference model is released."""

    describe: dict
    kind: str
    vocab_size: int | None
    own_dtype: str | None                   # the reference's one floating dtype (None: mixed, or not torch)
    outputs: list[dict]                     # per input set, at its own precision (CPU tensors)
    generation: Any = None                  # greedy (tokens, steps) or None
    hi: list[dict] | None = None            # per input set, in float64 (calibration), or None
    at: dict[str, list[dict]] = field(default_factory=dict)       # per precision: outputs per input set
    layers: list | None = None              # per input set: layers.Recorded, or None (not recordable)
    coverage: Any = None                    # coverage.reference_rows(...)
    seconds: dict = field(default_factory=dict)


class Recorder:
    """Runs the reference for :func:`record` and for a later precision (:meth:`add_precision`)."""

    def __init__(self, sets, *, locate: bool):
        self.sets, self.locate = sets, locate

    def names(self, r: Runnable):
        from .layers import module_names

        if not (self.locate and _eager(r)):
            return None
        blocks, children = module_names(r)
        return (blocks, children) if blocks else None

    def float64(self, r: Runnable, rec: ReferenceRecord) -> None:
        """The float64 run of every input set. A causal LM's rows run on their real tokens only (padding kept out
        of exact runs: transformers' float64 masks turn a left-padded row into NaN), packed right-padded into
        as few forwards as :func:`packed` allows: each forward casts the whole model module by module, which
        costs more than the tokens."""
        with streamed(r, "float64") as rr:
            feeds = [_cast_feeds(s.feeds, "float64") for s in self.sets]
            if r.kind == CAUSAL_LM and all(_token_rows(f) for f in feeds):
                rec.hi = packed(rr, feeds)
            else:
                rec.hi = [_cpu(rr.run(f)) for f in feeds]

    def add_precision(self, r: Runnable, rec: ReferenceRecord, dtype: str) -> None:
        """The reference's outputs at a lower precision a candidate is checked at."""
        with streamed(r, dtype) as rr:
            rec.at[dtype] = [_cpu(rr.run(_cast_feeds(s.feeds, dtype))) for s in self.sets]


def _token_rows(feeds: dict) -> bool:
    """Feeds of a causal LM that can be cut into rows of real tokens: every feed (batch, seq) like the mask."""
    mask = feeds.get("attention_mask")
    return mask is not None and mask.dim() == 2 and all(tuple(v.shape) == tuple(mask.shape) for v in feeds.values())


_WASTE = 0.5        # at most this share of a packed forward's positions is padding


def packed(r: Runnable, feeds_list: list[dict]) -> list[dict]:
    """``r``'s outputs on each feeds, each row computed on its real tokens alone: the rows of every set, longest
    first, are packed right-padded into batches (so padding comes after the real tokens, which a causal model
    never attends to, and their positions start at 0 as in a row of their own) of at most :data:`_WASTE` padding;
    the outputs go back to each row's real positions, NaN at padded ones."""
    import torch

    rows = [(i, b, f["attention_mask"][b].bool()) for i, f in enumerate(feeds_list)
            for b in range(f["attention_mask"].shape[0]) if bool(f["attention_mask"][b].any())]
    rows.sort(key=lambda row: -int(row[2].sum()))
    groups: list[list] = []
    for row in rows:
        n = int(row[2].sum())
        g = groups[-1] if groups else None
        if g is not None and sum(int(k.sum()) for *_, k in g) + n >= (1 - _WASTE) * int(g[0][2].sum()) * (len(g) + 1):
            g.append(row)
        else:
            groups.append([row])
    outs: list[dict] = [{} for _ in feeds_list]
    for g in groups:
        width = int(g[0][2].sum())
        batch = {}
        for name in feeds_list[g[0][0]]:
            pieces = []
            for i, b, keep in g:
                t = feeds_list[i][name][b, keep]
                pieces.append(torch.cat([t, t.new_zeros(width - t.shape[0])]))
            batch[name] = torch.stack(pieces)
        got = r.run(batch)
        for j, (i, b, keep) in enumerate(g):
            shape = feeds_list[i]["attention_mask"].shape
            for name, t in got.items():
                if name not in outs[i]:
                    outs[i][name] = torch.full((*shape, *t.shape[2:]), float("nan"), dtype=t.dtype)
                outs[i][name][b, keep] = t[j, :int(keep.sum())].detach().cpu()
        del got
    return outs


def _flat(named) -> list[str] | None:
    if not named:
        return None
    blocks, children = named
    return blocks + [c for b in blocks for c in children[b]]


def record(r: Runnable, sets, *, gen_set, new_tokens: int, calibrating: bool, lower: list[str], locate: bool,
           say=lambda line: None) -> tuple[ReferenceRecord, Recorder]:
    """Run the reference ``r`` on everything the candidates will be judged by (see the module's doc).
    ``lower``: the lower precisions candidates are expected at (each one more run of the reference)."""
    import time

    from .calibrate import float_dtype_of
    from .coverage import reference_rows
    from .generate import greedy
    from .layers import Recorded

    start = time.perf_counter()
    own = float_dtype_of(r.module) if calibrating else None
    rec = ReferenceRecord(describe(r), r.kind, r.vocab_size, own, [])
    recorder = Recorder(sets, locate=locate)
    say(f"reference: running {len(sets)} input sets" + (f" and {new_tokens} greedy tokens" if new_tokens else ""))
    rec.outputs = [_cpu(r.run(s.feeds)) for s in sets]
    if new_tokens:
        rec.generation = greedy(r, gen_set.feeds, new_tokens)
    named = recorder.names(r)
    if named:
        rec.layers = []
        for s in sets:
            feeds = s.feeds
            with recording(r, _flat(named), inputs=True) as (outs, ins, order):
                r.run(feeds)
            rec.layers.append(Recorded(named[0], named[1], feeds, outs, ins, order))
    if r.kind in (CAUSAL_LM, ENCODER):
        rec.coverage = reference_rows(r)
    if own:
        rec.at[own] = rec.outputs
    if calibrating:
        say("reference: running again in float64 (the noise floor)")
        recorder.float64(r, rec)
        for d in lower:
            if d not in rec.at:
                say(f"reference: running in {d} (a candidate's precision)")
                recorder.add_precision(r, rec, d)
    rec.seconds = {"run": time.perf_counter() - start}
    return rec, recorder
