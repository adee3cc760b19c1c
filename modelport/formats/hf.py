"""Hugging Face model directories: ``config.json`` plus safetensors or ``pytorch_model.bin`` weights,
single or sharded with an index. Tokenizer, generation and other side files are carried through."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import FormatError, UnsupportedError
from . import get, register
from .base import Format, ReadOptions, Span, StorageView, TensorInfo, TensorSource, WriteOptions
from .safetensors import write_file as write_safetensors

_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_SHARD_SIZE = 5 * 10**9


def _weight_files(path: Path) -> list[Path]:
    """The weight files of an HF directory, in order, from its index or the single-file names."""
    for index_name in _INDEXES:
        index = path / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise FormatError(f"{index}: corrupt index ({exc}); it needs a 'weight_map' object") from exc
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (path / f).is_file()]
            if missing:
                raise FormatError(f"{index}: names shard {missing[0]} which is not in {path}; the download is incomplete")
            return [path / f for f in files]
    for single in _SINGLES:
        if (path / single).is_file():
            return [path / single]
    return []


class HFSource(TensorSource):
    format = "hf"

    def __init__(self, path: Path, options: ReadOptions):
        super().__init__(path)
        config_path = path / "config.json"
        if config_path.is_file():
            try:
                self.config = json.loads(config_path.read_text())
            except ValueError as exc:
                raise FormatError(f"{config_path}: not valid JSON ({exc})") from exc
        files = _weight_files(path)
        if not files:
            raise FormatError(f"{path}: no weights found (expected model.safetensors, pytorch_model.bin, or a sharded index)")
        self._shards: list[TensorSource] = []
        self._where: dict[str, TensorSource] = {}
        self._aliases: dict[str, str] = {}
        try:
            for f in files:
                fmt = get("safetensors" if f.suffix == ".safetensors" else "pt")
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
        weights = {f.name for f in files} | set(_INDEXES) | {"config.json"}
        self.side_files = {
            str(p.relative_to(path)): p for p in sorted(path.rglob("*")) if p.is_file() and str(p.relative_to(path)) not in weights
        }

    def shard_paths(self) -> list[Path]:
        """The weight files joined on read (for the conversion manifest)."""
        return [s.path for s in self._shards]

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

    def write(self, source: TensorSource, dst: Path, options: WriteOptions, progress=None) -> None:
        """Write ``source`` (in its family's hub layout) with ``options.config`` as config.json; a
        ``_modelport_assumed`` list in it (values inferred, not read) becomes a note and is dropped."""
        if options.config is None:
            raise UnsupportedError(
                f"{source.path}: writing a Hugging Face directory needs a config.json; the source has none and its "
                "architecture is not recognised: pass --config FILE"
            )
        config = dict(options.config)
        assumed = config.pop("_modelport_assumed", None)
        shard_size = options.shard_size or DEFAULT_SHARD_SIZE
        dst.mkdir()
        (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        metadata = {**source.metadata, "format": "pt"}
        plan = _shard_plan(source, shard_size)
        if len(plan) == 1:
            write_safetensors(source, dst / "model.safetensors", plan[0], metadata, progress)
        else:
            weight_map = {}
            for i, names in enumerate(plan, 1):
                fname = f"model-{i:05d}-of-{len(plan):05d}.safetensors"
                write_safetensors(source, dst / fname, names, metadata, progress)
                weight_map.update(dict.fromkeys(names, fname))
            total = sum(source.info(n).nbytes for n in source.names())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        for rel, src in source.side_files.items():
            out = dst / rel
            if out.exists():  # the config and weights written above win over a side file of the same name
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)
        if assumed:
            source.notes.append(f"config.json values not in the weights, assumed: {', '.join(assumed)}")


register(HF())
