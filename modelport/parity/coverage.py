"""Every token id once: a cheap pass over the whole input-embedding table.

The seeded input sets feed a few dozen ids out of tens of thousands, so a fault in a few rows of the
input embedding (rows zeroed, a shard misplaced) would pass. The output table needs no such pass:
every position's logits use all of its rows. This pass looks up every id in the candidate's input
embedding alone, not through the model: a torch module's embedding is called directly, an ONNX graph
is cut down to the values leaving the embedding's scope (where the cut is one Gather from a stored table,
the rows are read from the file: what the Gather copies). Each row is held to a few ulps of its own
largest value at the less precise of the two dtypes (a lookup is exact; a cast rounds each value once).
The reference's rows wait in an unnamed temporary file while the candidates load and run (a whole
vocabulary's rows are the size of the embedding table), read back a chunk at a time.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .layers import _is_script, _prefixed_scope_values, _session_beside, _submodule, named_root, script_prefix

_ULPS = 4
_CHUNK = 4096          # rows compared at a time
_EPS = {"float64": 2.0 ** -52, "float32": 2.0 ** -23, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


@dataclass
class Coverage:
    """The input-embedding rows of every token id, reference against candidate."""

    module: str                    # the embedding's module name
    ids: int                       # ids looked up (the whole vocabulary)
    differing: int = 0             # rows beyond tolerance
    first_ids: list[int] = field(default_factory=list)   # up to 10 of them
    max_abs: float | None = None
    passed: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def embedding_name(ref) -> str | None:
    """The reference's input embedding: its first ``nn.Embedding`` with a row per vocabulary id."""
    from torch import nn

    if ref.vocab_size is None or not isinstance(ref.module, nn.Module) or _is_script(ref.module):
        return None
    for name, m in named_root(ref.module).named_modules():
        if isinstance(m, nn.Embedding) and m.num_embeddings == ref.vocab_size:
            return name
    return None


def looker(runnable, name: str):
    """A function ``ids (1 × n) -> rows (1 × n × dim)`` looking ids up in ``runnable``'s module ``name`` (an ONNX
    graph's cut, made once); None when it has no such module."""
    import torch

    if runnable.backend == "onnxruntime":
        return _onnx_looker(runnable, name)
    module = runnable.module
    try:
        sub = _submodule(module, script_prefix(runnable) + name) if _is_script(module) else \
            named_root(module).get_submodule(name)
    except AttributeError:
        return None

    def rows_of(ids):
        with torch.no_grad():
            return sub(ids.to(runnable.device)).detach().cpu()

    return rows_of


def _onnx_looker(runnable, name: str):
    import torch

    from ..formats.onnx import load_for_session
    from ..runtime import import_onnxruntime

    if runnable.path is None or "input_ids" not in [s.name for s in runnable.inputs]:
        return None
    model = load_for_session(Path(runnable.path))     # the graph alone: the cut's weights are read from the file
    values = _prefixed_scope_values(model, [name])
    if name not in values:
        return None
    cut = _cut(model, values[name])
    if cut is None:
        return None
    table = _stored_table(cut, Path(runnable.path))
    if table is not None:
        return table
    ort = import_onnxruntime()
    providers = runnable.module.get_providers() if hasattr(runnable.module, "get_providers") else ["CPUExecutionProvider"]
    session = _session_beside(ort, cut, Path(runnable.path), providers)

    def rows_of(ids):
        (out,) = session.run([values[name]], {"input_ids": ids.cpu().numpy()})
        return torch.from_numpy(out)

    return rows_of


def _stored_table(cut, path: Path):
    """Where the cut is one Gather of ``input_ids`` from a table stored in the file (what every exporter writes), a
    looker that reads the rows from the file (the bytes the Gather copies) instead of a second session that would
    hold the whole table beside the candidate's own (an ONNX candidate's peak: 100 MB less on SmolLM2); None
    otherwise. The rows are read a run at a time (:func:`reference_rows` looks ids up in order)."""
    import torch

    from .. import dtypes
    from ..formats.onnx import ONNX_DTYPES

    nodes = list(cut.graph.node)
    if len(nodes) != 1 or nodes[0].op_type != "Gather" or list(nodes[0].input)[1:] != ["input_ids"]:
        return None
    if any(a.name == "axis" and a.i != 0 for a in nodes[0].attribute):
        return None
    table = next((t for t in cut.graph.initializer if t.name == nodes[0].input[0]), None)
    if table is None or len(table.dims) != 2 or ONNX_DTYPES.get(table.data_type) not in dtypes.DTYPES:
        return None
    dtype = ONNX_DTYPES[table.data_type]
    rows, dim = (int(d) for d in table.dims)
    row_bytes = dim * dtypes.get(dtype).itemsize
    if table.data_location == 1:             # external: the bytes lie in a file beside the model (or in it)
        where = {e.key: e.value for e in table.external_data}
        if "/" in where.get("location", "/") or where["location"] in ("", ".", ".."):
            return None
        if int(where.get("length", rows * row_bytes)) != rows * row_bytes:
            return None
        file, offset, inline = path.parent / where["location"], int(where.get("offset", 0)), None
    elif len(table.raw_data) == rows * row_bytes:
        file, offset, inline = None, 0, table.raw_data
    else:
        return None

    def rows_of(ids):
        flat = ids.reshape(-1)
        if not flat.numel():
            return torch.empty(1, 0, dim, dtype=dtypes.to_torch(dtype))
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= rows:
            raise IndexError(f"{path}: token id {hi if hi >= rows else lo} is outside the embedding's {rows} rows")
        size = (hi + 1 - lo) * row_bytes
        if inline is not None:
            data = inline[lo * row_bytes:lo * row_bytes + size]
        else:
            with open(file, "rb") as f:
                data = os.pread(f.fileno(), size, offset + lo * row_bytes)
        if len(data) != size:
            raise OSError(f"{file}: the embedding table ends early; the file is truncated")
        block = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtypes.to_torch(dtype)).reshape(-1, dim)
        return block[flat - lo].unsqueeze(0)

    return rows_of


def _cut(model, value: str):
    """The part of the graph that computes ``value`` from ``input_ids`` alone (else None)."""
    import onnx

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    inputs = {i.name: i for i in graph.input}
    keep, need, seen = [], [value], set()
    while need:
        v = need.pop()
        if v in seen or not v:
            continue
        seen.add(v)
        if v in inits:
            continue
        if v in inputs:
            if v != "input_ids":
                return None          # the embedding needs more than the ids
            continue
        node = producer.get(v)
        if node is None or node.op_type in ("Loop", "If", "Scan"):
            return None
        keep.append(node)
        need.extend(node.input)
    order = {id(n): i for i, n in enumerate(graph.node)}
    nodes = sorted(keep, key=lambda n: order[id(n)])
    new = onnx.helper.make_graph(nodes, "embedding", [inputs["input_ids"]], [onnx.ValueInfoProto(name=value)],
                                 [inits[v] for v in seen if v in inits])
    out = onnx.helper.make_model(new, opset_imports=model.opset_import, ir_version=model.ir_version)
    return out


def reference_rows(ref):
    """The reference's input-embedding rows of every token id, in order: ``(module name, ids, rows)``,
    kept so that the reference model can be released before the candidates are checked; None when it has no
    embedding to look up."""
    import torch

    name = embedding_name(ref)
    if name is None:
        return None
    ids = torch.arange(ref.vocab_size).unsqueeze(0)     # in order: a chunk of ids is a run of rows in a table
    rows_of = looker(ref, name)
    return None if rows_of is None else (name, ids, _spill(rows_of, ids))


class SpilledRows:
    """Rows ``(1, n, dim)`` kept in an unnamed temporary file (gone when closed or when the process ends) and
    read back a chunk at a time: the reference's whole embedding table is not held while the candidates load
    and run."""

    def __init__(self, rows_of, ids, file):
        import weakref

        self._file = file
        weakref.finalize(self, file.close)
        for start in range(0, ids.shape[1], _CHUNK):      # looked up and written a chunk at a time
            rows = rows_of(ids[:, start:start + _CHUNK])
            file.write(memoryview(_as_bytes(rows).numpy()))
        self.shape, self.dtype = (1, ids.shape[1], rows.shape[-1]), rows.dtype
        self._row_bytes = rows.shape[-1] * rows.element_size()
        file.flush()

    def rows(self, start: int, stop: int):
        """Rows ``start:stop`` as a ``(stop - start, dim)`` tensor."""
        import os

        import torch

        stop = min(stop, self.shape[1])
        n = self._row_bytes * (stop - start)
        data = bytearray(os.pread(self._file.fileno(), n, self._row_bytes * start)) if n else bytearray()
        if len(data) != n:
            raise OSError(f"the temporary file of embedding rows ends early ({len(data)} of {n} bytes)")
        return torch.frombuffer(data, dtype=torch.uint8).view(self.dtype).reshape(stop - start, self.shape[-1]) \
            if n else torch.empty(0, self.shape[-1], dtype=self.dtype)


def _as_bytes(t):
    """A contiguous CPU tensor's bytes as a uint8 tensor (any dtype, bfloat16 included)."""
    import torch

    return t.contiguous().view(torch.uint8).reshape(-1)


def _spill(rows_of, ids):
    """The rows of ``ids`` in a temporary file (:class:`SpilledRows`); kept in memory where no temporary file can
    be written (the comparison is the same either way)."""
    import tempfile

    if not ids.numel():
        return rows_of(ids)
    try:
        file = tempfile.TemporaryFile(prefix="modelport-rows-")
    except OSError:
        return rows_of(ids)
    try:
        return SpilledRows(rows_of, ids, file)
    except OSError:                     # a full disk: keep them in memory instead
        file.close()
        return rows_of(ids)


def _chunk(rows, start: int, stop: int):
    return rows.rows(start, stop) if isinstance(rows, SpilledRows) else rows[0, start:stop]


def check_rows(recorded, cand) -> Coverage | None:
    """The candidate's rows of the ids in ``recorded`` (see :func:`reference_rows`) against the reference's."""
    import torch

    if recorded is None:
        return None
    name, ids, a = recorded
    rows_of = looker(cand, name)
    if rows_of is None:
        return None
    wrong, worst, low = [], None, None
    for start in range(0, a.shape[1], _CHUNK):           # in pieces: neither side's whole table is held
        x, y = _chunk(a, start, start + _CHUNK), rows_of(ids[:, start:start + _CHUNK])[0]
        if x.shape != y.shape:
            return None
        if low is None:
            low = max((str(t.dtype).replace("torch.", "") for t in (x, y)), key=lambda d: _EPS.get(d, 0.0))
            ulps = _ULPS * _EPS.get(low, _EPS["float32"])
        if x.dtype == y.dtype and torch.equal(x, y):      # a copy: every row equal, nothing to measure
            continue
        x, y = x.double(), y.double()
        err = (x - y).abs()
        err = torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))
        bad = (err > ulps * x.abs().amax(-1, keepdim=True)).any(-1)
        wrong += ids[0, start:start + _CHUNK][bad].tolist()
        finite = err[torch.isfinite(err)]
        if finite.numel():
            worst = max(worst or 0.0, float(finite.max()))
    wrong.sort()
    return Coverage(name, int(ids.numel()), len(wrong), wrong[:10], 0.0 if worst is None and not wrong else worst,
                    passed=not wrong)
