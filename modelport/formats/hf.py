"""Hugging Face model directories: ``config.json`` plus safetensors or ``pytorch_model.bin`` weights,
single or sharded with an index. Tokenizer, generation and other side files are carried through."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..atomic import MARKER
from ..errors import ConfigNeededError, FormatError, opt
from ._registry import register
from ._untrusted import inside, open_regular, read_json_file, side_files
from .base import Format, ReadOptions, SourceFile, Span, StorageView, TensorInfo, TensorSource, WriteOptions, WriteResult
from .pt import Pt
from .safetensors import Safetensors
from .safetensors import write_file as write_safetensors

_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_SHARD_SIZE = 5 * 10**9
ASSUMED_METADATA = "modelport.assumed_config"   # safetensors metadata: config values guessed, not known


def _weight_files(path: Path) -> list[Path]:
    """The weight files of an HF directory, in order, from its index or the single-file names."""
    return _weights_and_index(path)[0]


def _weights_and_index(path: Path) -> tuple[list[Path], Path | None]:
    """The weight files of an HF directory, in order, from its index or the single-file names, and the
    index they came from. Every name must be a regular file inside the directory (see formats/_untrusted.py)."""
    for index_name in _INDEXES:
        index = path / index_name
        if index.is_file():
            inside(path, index_name, "index")
            data = read_json_file(index, "index")
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise FormatError(f"{index}: corrupt index; it needs a 'weight_map' object of tensor name -> file name")
            files = sorted(set(weight_map.values()))
            paths = [inside(path, f, "shard") for f in files]
            missing = [f for f, p in zip(files, paths) if not p.is_file()]
            if missing:
                raise FormatError(f"{index}: names shard {missing[0]!r} which is not in {path}; the download is incomplete")
            return paths, index
    for single in _SINGLES:
        if (path / single).is_file():
            return [inside(path, single, "weight file")], None
    return [], None


class HFSource(TensorSource):
    format = "hf"

    def __init__(self, path: Path, options: ReadOptions):
        super().__init__(path)
        config_path = path / "config.json"
        self._config_path: Path | None = None
        if config_path.is_file():
            self._config_path = inside(path, "config.json", "config")
            self.config = read_json_file(self._config_path, "config.json")
            if not isinstance(self.config, dict):
                raise FormatError(f"{config_path}: config.json is {type(self.config).__name__}, not a JSON object")
        files, self._index = _weights_and_index(path)
        if not files:
            raise FormatError(f"{path}: no weights found (expected model.safetensors, pytorch_model.bin, or a sharded index)")
        self._shards: list[TensorSource] = []
        self._where: dict[str, TensorSource] = {}
        self._aliases: dict[str, str] = {}
        try:
            for f in files:
                fmt = Safetensors() if f.suffix == ".safetensors" else Pt()
                shard = fmt.open(f, options)
                self._shards.append(shard)
                for name in shard.names():
                    if name in self._where:
                        raise FormatError(f"{path}: tensor {name!r} appears in both {self._where[name].path.name} and {f.name}")
                    self._where[name] = shard
                self._aliases.update(shard.aliases())
                for k, v in shard.metadata.items():
                    self.metadata.setdefault(k, v)
        except BaseException:
            self.close()
            raise
        weights = {f.name for f in files} | set(_INDEXES) | {"config.json", MARKER}
        self.side_files = side_files(path, weights | {"model.safetensors", "pytorch_model.bin"}, self.notes)

    def files(self) -> list[SourceFile]:
        out = [SourceFile(s.path, "weights") for s in self._shards]
        if self._index is not None:
            out.append(SourceFile(self._index, "index"))
        if self._config_path is not None:
            out.append(SourceFile(self._config_path, "config"))
        return out + [SourceFile(p, "side") for p in self.side_files.values()]

    def names(self) -> list[str]:
        return list(self._where)

    def info(self, name: str) -> TensorInfo:
        return self._where[name].info(name)

    def read_bytes(self, name: str):
        return self._where[name].read_bytes(name)

    def span(self, name: str) -> Span | None:
        return self._where[name].span(name)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def storage_view(self, name: str) -> StorageView | None:
        shard = self._where[name]
        view = shard.storage_view(name)
        if view is None:
            return None
        return StorageView(f"{shard.path.name}/{view.key}", view.numel, view.offset, view.stride)

    def _storage_owner(self, key: str) -> tuple[TensorSource, str]:
        shard_name, _, inner = key.partition("/")
        return next(s for s in self._shards if s.path.name == shard_name), inner

    def read_storage_bytes(self, key: str):
        shard, inner = self._storage_owner(key)
        return shard.read_storage_bytes(inner)

    def storage_span(self, key: str) -> Span | None:
        shard, inner = self._storage_owner(key)
        return shard.storage_span(inner)

    def close(self) -> None:
        for shard in self._shards:
            shard.close()


def _shard_plan(source: TensorSource, shard_size: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name in source.names():
        nbytes = source.info(name).nbytes
        if shards[-1] and size + nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


class HF(Format):
    id = "hf"
    description = "Hugging Face model directory (config.json + safetensors or pytorch_model.bin, sharded or not)"
    directory = True
    config_file = "config.json"

    def sniff(self, path: Path) -> bool:
        return path.is_dir() and (path / "config.json").is_file() and bool(_weight_files(path))

    def open(self, path: Path, options: ReadOptions) -> HFSource:
        if not path.is_dir():
            raise FormatError(f"{path}: a Hugging Face model is a directory; this is a file (use --from to pick its format)")
        return HFSource(path, options)

    def write(self, source: TensorSource, dst: Path, options: WriteOptions, progress=None) -> WriteResult:
        """Write ``source`` (in its family's hub layout) with ``options.config`` as config.json; a
        ``_modelport_assumed`` list in it (values inferred, not read) becomes a note and is dropped."""
        if options.config is None:
            raise ConfigNeededError(
                f"{source.path}: writing a Hugging Face directory needs a config.json; the source has none and its "
                f"architecture is not recognised: pass {opt('config', repr('config.json'), 'FILE')}"
            )
        config = dict(options.config)
        assumed = config.pop("_modelport_assumed", None)
        shard_size = options.shard_size or DEFAULT_SHARD_SIZE
        dst.mkdir()
        (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        written = [dst / "config.json"]
        metadata = {**source.metadata, "format": "pt"}
        if assumed:      # what the written config.json guessed, so the file itself says so
            metadata[ASSUMED_METADATA] = json.dumps({k: config.get(k) for k in assumed}, sort_keys=True)
        plan = _shard_plan(source, shard_size)
        shards: list[Path] = []
        if len(plan) == 1:
            write_safetensors(source, dst / "model.safetensors", plan[0], metadata, progress, options.align)
            written.append(dst / "model.safetensors")
        else:
            weight_map = {}
            for i, names in enumerate(plan, 1):
                fname = f"model-{i:05d}-of-{len(plan):05d}.safetensors"
                write_safetensors(source, dst / fname, names, metadata, progress, options.align)
                weight_map.update(dict.fromkeys(names, fname))
                shards.append(dst / fname)
            total = sum(source.info(n).nbytes for n in source.names())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
            written += shards + [dst / "model.safetensors.index.json"]
        for rel, src in source.side_files.items():
            out = dst / rel
            if out.exists():  # the config and weights written above win over a side file of the same name
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with open_regular(src) as fin, open(out, "xb") as fout:   # a regular file, copied as bytes only
                shutil.copyfileobj(fin, fout, 1 << 20)
            written.append(out)
        notes = ()
        if assumed:
            notes = (f"config.json values not in the weights, assumed: {', '.join(assumed)} "
                     f"(recorded as {ASSUMED_METADATA} in the weights' metadata)",)
        return WriteResult(tuple(written), tuple(shards), notes)


register(HF())
