"""meta: Meta's Llama checkpoints, a directory of ``params.json`` and ``consolidated.NN.pth``.

Model-parallel shards are merged on read, one tensor at a time, and split on write
(``WriteOptions.shards``, 1 by default) as Meta's fairscale layers split them:

* column-parallel weights (wq, wk, wv, w1, w3, output) on dim 0,
* row-parallel weights (wo, w2) on dim 1,
* the embedding on dim 1 for Llama 1/2 (ParallelEmbedding) and on dim 0 for Llama 3
  (VocabParallelEmbedding),
* norms (and Llama 1/2's ``rope.freqs``) replicated in every shard.

A checkpoint counts as Llama 3 when its vocabulary has at least 128000 entries, or its
params.json sets ``use_scaled_rope``, or its ``rope_theta`` is at least 500000 (Llama 1/2
use 10000; every Llama 3 model uses 500000).

This module moves bytes only: the source keeps ``params.json`` as ``params`` (checked against the
keys of Meta's ``ModelArgs``), and the writer takes the ``params.json`` to write from its
:class:`WriteOptions` (``config``). Translating params.json to and from a Hugging Face
``config.json`` is the Llama family's business (:mod:`modelport.models.families.llama`). The
original ``params.json`` also travels in the source's metadata (``meta.params``; the hf writer
keeps it in the safetensors metadata), so that meta -> hf -> meta writes the same ``params.json``
while it still describes the model. The shard files are read and written without torch (through
the pt adapter); they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..atomic import MARKER
from ..errors import FormatError, LayoutError, UnsupportedError
from ._registry import register
from ._stream import read_span, span_chunks
from ._untrusted import expect, inside, is_regular_inside, read_json_file, side_files
from .base import Format, ReadOptions, SourceFile, Span, TensorInfo, TensorSource, WriteOptions, WriteResult
from .pt import Pt

_SHARD = re.compile(r"consolidated\.(\d+)\.pth\Z")
PARAMS_KEY = "meta.params"     # metadata key carrying the original params.json
# The Hugging Face config.json a Meta checkpoint was written from: what params.json cannot hold (token ids,
# max positions, dtype …) so that hf -> meta -> hf gives the same config.json back.
HF_CONFIG = "hf_config.json"

# The embedding and output names of Meta's files (tied models write the embedding as both).
EMBEDDING, OUTPUT = "tok_embeddings.weight", "output.weight"

# Dimension each tensor is split on across model-parallel shards; None: replicated.
# "embedding" is decided by the Llama generation (see the module docstring).
_SPLIT = (
    (re.compile(r"tok_embeddings\.weight\Z"), "embedding"),
    (re.compile(r"output\.weight\Z"), 0),
    (re.compile(r"layers\.\d+\.attention\.w[qkv]\.weight\Z"), 0),
    (re.compile(r"layers\.\d+\.feed_forward\.w[13]\.weight\Z"), 0),
    (re.compile(r"layers\.\d+\.attention\.wo\.weight\Z"), 1),
    (re.compile(r"layers\.\d+\.feed_forward\.w2\.weight\Z"), 1),
    (re.compile(r"(layers\.\d+\.(attention_norm|ffn_norm)\.weight|norm\.weight|rope\.freqs)\Z"), None),
)



def split_dim(name: str, llama3: bool) -> int | None:
    for pattern, dim in _SPLIT:
        if pattern.match(name):
            return (0 if llama3 else 1) if dim == "embedding" else dim
    raise LayoutError(f"tensor {name!r} is not a Meta Llama tensor; cannot tell how it is split across model-parallel shards")


_PARAM_TYPES = {   # key: (JSON type, smallest value, largest value); None: may be null
    "dim": (int, 1, 1 << 20), "n_layers": (int, 1, 10_000), "n_heads": (int, 1, 1 << 16), "n_kv_heads": (int, 1, 1 << 16),
    "vocab_size": (int, -1, 1 << 24), "multiple_of": (int, 1, 1 << 20), "ffn_dim_multiplier": (float, 1e-3, 1e3),
    "norm_eps": (float, 0.0, 1.0), "rope_theta": (float, 1e-3, 1e12), "use_scaled_rope": (bool, None, None),
    "rope_scaling_factor": (float, 1e-3, 1e6), "low_freq_factor": (float, 1e-6, 1e6), "high_freq_factor": (float, 1e-6, 1e6),
    "original_max_position_embeddings": (int, 1, 1 << 24), "max_seq_len": (int, 1, 1 << 24), "max_batch_size": (int, 1, 1 << 20),
}
_NULLABLE = {"n_kv_heads", "ffn_dim_multiplier", "vocab_size"}


def is_llama3(params: dict, vocab_rows: int | None = None) -> bool:
    """Llama 3 rather than 1/2 (see the module docstring): the one place modelport decides it, for the
    shards' split dims, the max positions params.json leaves out, and a rope_theta guessed for bare
    weights. ``vocab_rows``: the embedding's rows, counted where params.json's vocab_size is -1 or absent."""
    vocab = params.get("vocab_size")
    if vocab in (None, -1):
        vocab = vocab_rows
    return (int(vocab or -1) >= 128000 or bool(params.get("use_scaled_rope"))
            or float(params.get("rope_theta", 10000.0)) >= 500000)


# The keys of Meta's ModelArgs: params.json may hold no other (``ModelArgs(**params)`` would fail).
PARAMS_KEYS = frozenset({"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
                         "norm_eps", "rope_theta", "use_scaled_rope", "rope_scaling_factor", "low_freq_factor",
                         "high_freq_factor", "original_max_position_embeddings", "max_seq_len", "max_batch_size"})


def check_params(params, where) -> dict:
    """``params`` when it is a params.json Meta's code accepts; a FormatError naming the key otherwise."""
    if not isinstance(params, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(params).__name__}")
    unknown = sorted(set(params) - PARAMS_KEYS)
    if unknown:
        raise FormatError(f"{where}: unknown keys {unknown}; Meta's ModelArgs knows only {sorted(PARAMS_KEYS)}")
    for key in ("dim", "n_layers", "n_heads"):
        if key not in params:
            raise FormatError(f"{where}: missing {key!r}")
    for key, value in params.items():    # each of the type and range ModelArgs uses: no "4096", no 0, no NaN
        if value is None and key in _NULLABLE:
            continue
        kind, lo, hi = _PARAM_TYPES[key]
        expect(value, kind, where, f"{key!r}")
        if lo is not None and not lo <= value <= hi:
            raise FormatError(f"{where}: {key!r} is {value}, outside {lo}..{hi}")
    return params


class MetaSource(TensorSource):
    format = "meta"
    model_parallel = True

    def __init__(self, path: Path):
        super().__init__(path)
        pj = self.path / "params.json"
        if not pj.exists():
            raise FormatError(f"{self.path}: no params.json; a Meta checkpoint directory has params.json and consolidated.NN.pth")
        self.params = check_params(read_json_file(inside(self.path, "params.json", "params.json"), "params.json"), pj)
        self.native_config = ("params.json", self.params)
        found = sorted((int(m.group(1)), inside(self.path, p.name, "shard")) for p in self.path.iterdir() if (m := _SHARD.match(p.name)))
        if not found:
            raise FormatError(f"{self.path}: no consolidated.NN.pth files")
        if [i for i, _ in found] != list(range(len(found))):
            raise FormatError(f"{self.path}: shard files are not numbered 00..{len(found) - 1}: {', '.join(p.name for _, p in found)}")
        self._shards: list[TensorSource] = []
        try:
            for _, p in found:
                self._shards.append(Pt().open(p, ReadOptions()))
        except BaseException:
            self.close()
            raise
        first = self._shards[0]
        names = list(first.names())
        for r in self._shards[1:]:
            if set(r.names()) != set(names) or set(r.aliases()) != set(first.aliases()):
                odd = sorted(set(r.names()) ^ set(names))[:3]
                raise FormatError(f"{r.path}: holds other tensors than {first.path.name} ({', '.join(odd)} …); the shards are of different checkpoints")
        has = set(names) | set(first.aliases())
        emb = first.info(EMBEDDING) if EMBEDDING in names else None
        vocab = emb.shape[0] if emb is not None and (len(self._shards) == 1 or not is_llama3(self.params)) else None
        if vocab is None and emb is not None:
            vocab = emb.shape[0] * len(self._shards)
        self.llama3 = is_llama3(self.params, vocab)
        tied = OUTPUT not in names or self._output_is_embedding()
        if OUTPUT in names and tied:   # written from a tied model: the HF layout leaves lm_head out
            names.remove(OUTPUT)
        self.metadata = {PARAMS_KEY: json.dumps(self.params)}
        self.notes = [f"{len(self._shards)} model-parallel shard(s), Llama {'3' if self.llama3 else '1/2'} sharding"]
        self.side_files = side_files(self.path, {"params.json", "checklist.chk", MARKER, HF_CONFIG} | {p.name for _, p in found},
                                     self.notes)
        if tied and OUTPUT in has:
            self.notes.append("output.weight equals tok_embeddings.weight: read as tied embeddings")
        self._infos: dict[str, tuple[TensorInfo, int | None]] = {}
        for name in names:
            self._infos[name] = self._merged_info(name)
        self._check_params_against_weights(pj)

    def _check_params_against_weights(self, pj: Path) -> None:
        """params.json's sizes must be the weights' (n_layers 10**12 is not copied into a config)."""
        layers = {int(m.group(1)) for n in self._infos if (m := re.match(r"layers\.(\d+)\.", n))}
        if layers and self.params["n_layers"] != max(layers) + 1:
            raise FormatError(f"{pj}: n_layers is {self.params['n_layers']} but the weights hold {max(layers) + 1} layers")
        emb = self._infos.get(EMBEDDING)
        if emb is not None and (len(emb[0].shape) != 2 or emb[0].shape[1] != self.params["dim"]):
            raise FormatError(f"{pj}: dim is {self.params['dim']} but {EMBEDDING} has shape {list(emb[0].shape)}")

    def _output_is_embedding(self) -> bool:
        """True when the output weight has the bytes of the embedding (tied embeddings).
        Compared piece by piece: an untied model differs within the first piece."""
        if len(self._shards) > 1 and split_dim(EMBEDDING, self.llama3) != split_dim(OUTPUT, self.llama3):
            return self._output_is_embedding_across()
        for r in self._shards:
            if EMBEDDING not in r.names():
                return False
            out, emb = r.info(OUTPUT), r.info(EMBEDDING)
            if out.shape != emb.shape or out.dtype != emb.dtype:
                return False
            a, b = r.span(OUTPUT), r.span(EMBEDDING)
            if a is None or b is None or not _same_bytes(a, b):
                return False
        return True

    def _output_is_embedding_across(self) -> bool:
        """Llama 1/2 sharding splits the embedding on columns and the output on rows, so output shard k's
        rows are row block k of every embedding shard side by side: compared a few MiB of rows at a time."""
        outs, embs = [], []
        for r in self._shards:
            if EMBEDDING not in r.names():
                return False
            out, emb = r.info(OUTPUT), r.info(EMBEDDING)
            a, b = r.span(OUTPUT), r.span(EMBEDDING)
            if a is None or b is None or out.dtype != emb.dtype or len(out.shape) != 2 or len(emb.shape) != 2:
                return False
            outs.append((out.shape, a))
            embs.append((emb.shape, b))
        rows, width = embs[0][0][0], outs[0][0][1]
        if (sum(shape[0] for shape, _ in outs) != rows or sum(shape[1] for shape, _ in embs) != width
                or any(shape[0] != rows for shape, _ in embs) or any(shape[1] != width for shape, _ in outs)):
            return False
        import numpy as np

        item = outs[0][1].nbytes // max(1, outs[0][0][0] * width)
        step = max(1, (4 << 20) // max(1, width * item))
        first = 0
        for (shape, out), _ in zip(outs, embs):
            for row in range(0, shape[0], step):
                n = min(step, shape[0] - row)
                want = np.frombuffer(read_span(Span(out.path, out.offset + row * width * item, n * width * item)),
                                     dtype=np.uint8).reshape(n, width * item)
                got = np.concatenate([np.frombuffer(read_span(Span(e.path, e.offset + (first + row) * cols * item,
                                                                   n * cols * item)), dtype=np.uint8).reshape(n, cols * item)
                                      for (_, cols), e in embs], axis=1)
                if not np.array_equal(want, got):
                    return False
            first += shape[0]
        return True

    def _merged_info(self, name: str) -> tuple[TensorInfo, int | None]:
        infos = [r.info(name) for r in self._shards]
        if len(infos) == 1:
            return infos[0], None
        dim = split_dim(name, self.llama3)
        if any(i.dtype != infos[0].dtype for i in infos):
            raise FormatError(f"{self.path}: tensor {name!r} has different dtypes in different shards")
        if dim is None:
            if any(i.shape != infos[0].shape for i in infos):
                raise FormatError(f"{self.path}: replicated tensor {name!r} has different shapes in different shards")
            return infos[0], None
        shape = list(infos[0].shape)
        if any(len(i.shape) != len(shape) or [s for k, s in enumerate(i.shape) if k != dim] != [s for k, s in enumerate(shape) if k != dim]
               for i in infos):
            raise FormatError(f"{self.path}: tensor {name!r}: shard shapes {[list(i.shape) for i in infos]} do not join on dim {dim}")
        shape[dim] = sum(i.shape[dim] for i in infos)
        return TensorInfo(name, infos[0].dtype, tuple(shape)), dim

    def files(self) -> list[SourceFile]:
        out = [SourceFile(r.path, "weights") for r in self._shards] + [SourceFile(self.path / "params.json", "config")]
        carried = self.path / HF_CONFIG
        if is_regular_inside(self.path, carried):
            out.append(SourceFile(carried, "config"))
        return out + [SourceFile(p, "side") for p in self.side_files.values()]

    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        return self._infos[name][0]

    def span(self, name: str) -> Span | None:
        return self._shards[0].span(name) if self._infos[name][1] is None else None

    def read_bytes(self, name: str):
        info, dim = self._infos[name]
        if dim is None:
            return self._shards[0].read_bytes(name)
        import numpy as np

        from .. import dtypes

        dt = np.dtype(dtypes.get(info.dtype).numpy)
        parts = [np.frombuffer(_read(r, name), dtype=dt).reshape(r.info(name).shape) for r in self._shards]
        return memoryview(np.concatenate(parts, axis=dim).reshape(-1).view(np.uint8))

    def close(self) -> None:
        for r in self._shards:
            r.close()


def _same_bytes(a: Span, b: Span) -> bool:
    if a.nbytes != b.nbytes:
        return False
    return all(x == y for x, y in zip(span_chunks(a, 1 << 20), span_chunks(b, 1 << 20)))


class Meta(Format):
    id = "meta"
    description = "Meta Llama checkpoint directory (params.json + consolidated.NN.pth)"
    directory = True
    config_file = "params.json"

    def sniff(self, path: Path) -> bool:
        return path.is_dir() and (path / "params.json").is_file() and (path / "consolidated.00.pth").is_file()

    def open(self, path: Path, options: ReadOptions) -> MetaSource:
        return MetaSource(path)

    def write(self, source: TensorSource, dst: Path, options: WriteOptions, progress=None) -> WriteResult:
        """Write ``source``, already in Meta's layout, with ``options.config`` as params.json."""
        params = options.config
        if params is None:
            raise UnsupportedError(f"{dst}: writing a Meta checkpoint needs the model's config; pass --config config.json")
        llama3 = is_llama3(params)
        n = int(options.shards or 1)
        if n < 1:
            raise UnsupportedError(f"{dst}: --shards must be at least 1, not {n}")
        names = list(source.names())
        extra: dict[str, str] = {}       # name written -> name read (a tied output from the embedding)
        for alias, kept in source.aliases().items():
            extra[alias] = kept
        if OUTPUT not in names and OUTPUT not in extra and EMBEDDING in names:
            extra[OUTPUT] = EMBEDDING   # tied embeddings: Meta's model always has an output
        plan = []   # (name written, name read, split dim, info)
        for name in names + list(extra):
            read = extra.get(name, name)
            info = source.info(read)
            dim = split_dim(name, llama3) if n > 1 else None
            if dim is not None and info.shape[dim] % n:
                raise UnsupportedError(f"tensor {name!r} of shape {list(info.shape)} cannot be split into {n} model-parallel shards "
                                       f"on dim {dim}; choose a --shards that divides {info.shape[dim]}")
            plan.append((name, read, dim, info))
        dst.mkdir(parents=True)
        (dst / "params.json").write_text(json.dumps(params), encoding="utf-8")
        written = [dst / "params.json"]
        if source.config is not None:
            carried = {k: v for k, v in source.config.items() if not k.startswith("_modelport")}
            (dst / HF_CONFIG).write_text(json.dumps(carried, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            written.append(dst / HF_CONFIG)
        from .pt import write_pt

        shards = [dst / f"consolidated.{s:02d}.pth" for s in range(n)]
        for s, shard in enumerate(shards):   # split tensors are read once per shard: time, not memory
            write_pt(_ShardSource(source, plan, s, n), shard, crc32=options.crc32, progress=progress, align=options.align)
        written += shards
        for fname, path in source.side_files.items():
            if fname in ("config.json", "params.json", HF_CONFIG) or _SHARD.match(fname) or fname.endswith(".safetensors"):
                continue
            from ._untrusted import open_regular

            with open_regular(path) as fin, open(dst / fname, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            written.append(dst / fname)
        return WriteResult(tuple(written), tuple(shards) if n > 1 else (), model_parallel=True)


def _read(source: TensorSource, name: str):
    """A tensor's bytes, read (not mapped) when they lie in a file, so no mapped pages stay resident."""
    span = source.span(name)
    return read_span(span) if span is not None else source.read_bytes(name)


class _ShardSource(TensorSource):
    """Model-parallel shard ``index`` of ``n`` of a Meta-layout source."""

    def __init__(self, source: TensorSource, plan, index: int, n: int):
        super().__init__(source.path)
        self.source, self.index, self.n = source, index, n
        self._plan = {}
        for name, read, dim, info in plan:
            shape = list(info.shape)
            if dim is not None:
                shape[dim] //= n
            self._plan[name] = (read, dim, TensorInfo(name, info.dtype, tuple(shape)))

    def names(self) -> list[str]:
        return list(self._plan)

    def info(self, name: str) -> TensorInfo:
        return self._plan[name][2]

    def span(self, name: str) -> Span | None:
        read, dim, _ = self._plan[name]
        return self.source.span(read) if dim is None else None

    def read_bytes(self, name: str):
        read, dim, info = self._plan[name]
        if dim is None:
            return self.source.read_bytes(read)
        import numpy as np

        from .. import dtypes

        full = self.source.info(read)
        a = np.frombuffer(_read(self.source, read), dtype=np.dtype(dtypes.get(full.dtype).numpy)).reshape(full.shape)
        part = np.ascontiguousarray(np.split(a, self.n, axis=dim)[self.index])
        return memoryview(part.reshape(-1).view(np.uint8))


register(Meta())
