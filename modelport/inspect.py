"""What a checkpoint holds: tensors, totals, a per-module parameter tree, metadata, architecture."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import formats
from .formats.base import Options


@dataclass
class TensorRow:
    name: str
    shape: list[int]
    dtype: str
    bytes: int
    alias_of: str | None = None
    buffer: bool = False       # module state (running statistics, pooling indices …), not a parameter


@dataclass
class ModuleRow:
    name: str          # dotted module path ("" is the whole model)
    depth: int
    params: int
    bytes: int
    tensors: int


@dataclass
class Summary:
    path: str
    format: str
    tensors: list[TensorRow]
    total_params: int          # elements of the tensors that are parameters (buffers apart)
    total_bytes: int
    dtypes: dict[str, int]
    modules: list[ModuleRow]
    metadata: dict[str, str] = field(default_factory=dict)
    architecture: str | None = None
    config: dict | None = None
    side_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tree: str | None = None
    model: str | None = None      # the rebuilt runnable module, when the file holds one
    total_buffers: int = 0        # elements of the tensors that are module state (buffers)
    aliases: int = 0              # tied names that share another tensor's data (rows with alias_of)

    def to_json(self) -> dict:
        return asdict(self)


def module_tree(rows: list[TensorRow], max_depth: int = 3) -> list[ModuleRow]:
    """Parameter counts per dotted prefix, like torchinfo's summary; runs of numbered children
    (``h.0`` … ``h.23``) stay listed one by one up to ``max_depth`` levels."""
    params: Counter = Counter()
    nbytes: Counter = Counter()
    count: Counter = Counter()
    order: dict[str, None] = {}
    for row in rows:
        if row.alias_of:
            continue
        parts = row.name.split(".")[:-1]
        numel = 0 if row.buffer else math.prod(row.shape)
        for depth in range(0, min(len(parts), max_depth) + 1):
            prefix = ".".join(parts[:depth])
            order.setdefault(prefix, None)
            params[prefix] += numel
            nbytes[prefix] += row.bytes
            count[prefix] += 1
    return [ModuleRow(p, 0 if not p else p.count(".") + 1, params[p], nbytes[p], count[p]) for p in order]


def natural_order(names: list[str]) -> list[str]:
    """``names`` with numbered siblings in numeric order (``h.2`` before ``h.10``) and named parts in the
    order they first appear (so a file's own order, embeddings first, head last, is kept)."""
    first: dict[tuple[str, ...], int] = {}
    for name in names:
        parts = tuple(name.split("."))
        for i in range(1, len(parts) + 1):
            first.setdefault(parts[:i], len(first))

    def key(name: str):
        parts = tuple(name.split("."))
        return tuple((0, int(p)) if p.isdigit() else (1, first[parts[:i + 1]]) for i, p in enumerate(parts))

    return sorted(names, key=key)


def inspect(path: str | Path, format: str | None = None, options: Options | None = None) -> Summary:  # noqa: A002
    from .models import detect_arch
    from .models.sources import open_source

    with open_source(path, format, options) as source:
        rows = []
        buffers = source.buffers()
        for info in source.infos():
            rows.append(TensorRow(info.name, list(info.shape), info.dtype, info.nbytes, buffer=info.name in buffers))
        for alias, kept in source.aliases().items():
            info = source.info(kept)
            rows.append(TensorRow(alias, list(info.shape), info.dtype, 0, alias_of=kept, buffer=kept in buffers))
        by_name = {r.name: r for r in rows}
        rows = [by_name[n] for n in natural_order(list(by_name))]
        own = [r for r in rows if not r.alias_of]
        dtype_counts = Counter()
        for r in own:
            dtype_counts[r.dtype] += math.prod(r.shape)
        return Summary(
            path=str(path),
            format=source.format,
            tensors=rows,
            total_params=sum(math.prod(r.shape) for r in own if not r.buffer),
            total_buffers=sum(math.prod(r.shape) for r in own if r.buffer),
            aliases=len(rows) - len(own),
            total_bytes=sum(r.bytes for r in own),
            dtypes=dict(dtype_counts),
            modules=module_tree(own),
            metadata=dict(source.metadata),
            architecture=detect_arch(source),
            config=source.config,
            side_files=sorted(source.side_files),
            notes=list(source.notes),
            tree=source.tree(),
            model=source.model_summary(),
        )


@dataclass
class RunCheck:
    """A runnable model built from a checkpoint and run once on an example input."""

    model: str                     # what was built
    parameters: int
    input: list[list[int]]         # shapes of the inputs it ran on
    output: list[int]              # shape of the (first) output
    finite: bool                   # every output value is finite
    assumed: list[str] = field(default_factory=list)   # config values not in the weights, guessed

    def to_json(self) -> dict:
        return asdict(self)


def run_check(path: str | Path, load=None, **load_kwargs) -> RunCheck:
    """Build the runnable model of ``path`` (known architecture, ``--arch`` module, or Lua nn model) as
    ``load`` (a :class:`~modelport.models.spec.LoadSpec`, or its fields as keywords) describes it, run it
    once on an example input, and say what came out."""
    from .runtime import need_torch

    torch = need_torch("inspect --run")

    from .models.runnable import example_feeds, load_runnable

    runnable = load_runnable(path, load, **load_kwargs)
    feeds = example_feeds(runnable)
    first = runnable.run(feeds)[runnable.outputs[0]]
    return RunCheck(runnable.origin, runnable.parameters, [list(x.shape) for x in feeds.values()],
                    list(first.shape), bool(torch.isfinite(first).all()), list(runnable.assumed))
