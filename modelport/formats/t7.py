"""Lua Torch7 ``.t7`` files (``torch.save`` of Lua Torch): every reachable tensor, by a dotted path.

Reading names each tensor by the keys that lead to it from the file's first object.
For ``nn`` containers the ``modules`` level is dropped and the 1-based Lua index
becomes a 0-based child index, as PyTorch names children (``0.weight``, ``2.bias``).
Buffers are included; a bare storage is a 1-D tensor; ``ReadOptions.params_only`` keeps
just ``nn`` parameters. Tensors that share a Lua storage are reported through
``storage_view`` so writers that can keep the sharing do.

Writing produces a Lua table ``{name = tensor}`` that real ``torch.load`` reads.

numpy is imported inside functions only: ``modelport formats`` imports this module.
"""

from __future__ import annotations

import math

import re
import struct
from pathlib import Path

from ..errors import UnsupportedError
from ._registry import register
from .base import Format, ReadOptions, Span, StorageView, TensorInfo, TensorSource, WriteOptions, WriteResult, file_size, is_contiguous, read_head

# Fields of an nn module that are parameters (and running statistics), not buffers.
PARAMETER_FIELDS = frozenset({"weight", "bias", "running_mean", "running_var", "running_std"})
_TREE_LINES = 4000


class T7Source(TensorSource):
    format = "t7"

    def __init__(self, path: Path, options: ReadOptions):
        from ..t7.reader import read_t7

        super().__init__(path)
        self._size = file_size(path)
        self.file = read_t7(path, long_size=options.t7_long_size, endian=options.t7_endian)
        self.notes = list(self.file.notes)
        self._params_only = options.params_only
        self._entries: dict[str, object] = {}         # name -> T7Tensor or T7Storage
        self._storage_keys: dict[int, str] = {}       # id(storage) -> key
        self._storages: dict[str, object] = {}        # key -> T7Storage
        self._aliases: dict[str, str] = {}
        self._buffers: set[str] = set()               # nn module state other than weight and bias
        self._collect()
        self._check_expansion(options.allow_expanded)

    def _check_expansion(self, allow: bool) -> None:
        """Stride-0 and overlapping views may not make the tensors far larger than the file's storages."""
        from ..t7.objects import T7Tensor
        from ._untrusted import check_expansion

        logical = stored = 0
        used: dict[int, object] = {}
        for value in self._entries.values():
            storage = value.storage if isinstance(value, T7Tensor) else value
            if storage is None:
                continue
            item = storage.data.itemsize
            logical += (_numel(value) if isinstance(value, T7Tensor) else storage.size) * item
            used[id(storage)] = storage.size * item
        stored = sum(used.values())
        check_expansion(self.path, logical, stored, allow)

    # -- naming ------------------------------------------------------------------------
    def _collect(self) -> None:
        from ..t7.objects import LuaFunction, LuaObject, LuaTable, T7Storage, T7Tensor

        root = self.file.root
        seen: set[int] = set()
        named: dict[int, str] = {}                  # id(tensor) -> the name it is kept under
        views: dict[tuple, str] = {}
        # Depth-first, children in file order, nn children first; a name is the first path met.
        # (path, value, owning nn object, field under it, (nn object, field) the nearest one holds it under)
        stack: list[tuple] = [((), root, None, None, (None, None))]
        while stack:
            path, value, owner, field, held = stack.pop()
            if isinstance(value, (T7Tensor, T7Storage)):
                name = ".".join(path) or ("tensor" if isinstance(value, T7Tensor) else "storage")
                if self._params_only and not _is_parameter(value, owner, field):
                    continue
                if id(value) in seen:       # the same Lua tensor under a second key: a tie
                    if name not in self._entries:
                        self._aliases.setdefault(name, named[id(value)])
                    continue
                seen.add(id(value))
                named[id(value)] = kept = self._add(name, value, views)
                if _is_buffer(*held):
                    self._buffers.add(kept)
                continue
            if isinstance(value, (LuaTable, LuaObject, LuaFunction)):
                if id(value) in seen:
                    continue
                seen.add(id(value))
                children = list(_children(value))
                owner_obj = value if isinstance(value, LuaObject) else None
                for part, child in reversed(children):
                    if isinstance(child, (LuaTable, LuaObject, LuaFunction, T7Tensor, T7Storage)):
                        # a table inside a module (gradInput = {…}) is held under the module's field
                        child_held = (owner_obj, part) if owner_obj is not None else held
                        stack.append((path + (part,), child, owner_obj, part, child_held))

    def _add(self, name: str, value, views: dict) -> str:
        """Record a tensor (or bare storage) under ``name``; the name it is kept under."""
        from ..t7.objects import T7Tensor

        base, n = name, 1
        while name in self._entries or name in self._aliases:
            n += 1
            name = f"{base}~{n}"
        storage = value.storage if isinstance(value, T7Tensor) else value
        if storage is not None:
            key = self._storage_keys.setdefault(id(storage), f"storage{len(self._storage_keys) + 1}")
            self._storages[key] = storage
            if isinstance(value, T7Tensor):
                view = (key, value.offset, value.size, value.stride)
                numel = _numel(value)
            else:
                view = (key, 0, (storage.size,), (1,))
                numel = storage.size
            if numel and view in views:
                self._aliases[name] = views[view]
                return views[view]
            if numel:
                views[view] = name
        self._entries[name] = value
        return name

    # -- the TensorSource interface ----------------------------------------------------
    def names(self) -> list[str]:
        return list(self._entries)

    def buffers(self) -> set[str]:
        return {n for n in self._buffers if n in self._entries}

    def info(self, name: str) -> TensorInfo:
        value = self._entries[name]
        return TensorInfo(name, value.dtype, _shape(value))

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def _array(self, name: str):
        from ..t7.objects import T7Tensor

        value = self._entries[name]
        return value.numpy() if isinstance(value, T7Tensor) else value.data

    def read_bytes(self, name: str) -> memoryview:
        import numpy as np

        from ._untrusted import still_whole

        still_whole(self.path, self._size)
        arr = np.ascontiguousarray(self._array(name)).reshape(-1)
        return memoryview(arr).cast("B")

    def span(self, name: str) -> Span | None:
        from ..t7.objects import T7Tensor

        value = self._entries[name]
        storage = value.storage if isinstance(value, T7Tensor) else value
        if storage is None or storage.file_offset is None:
            return None
        item = storage.data.itemsize
        if isinstance(value, T7Tensor):
            if not is_contiguous(value.size, value.stride):
                return None
            return Span(self.path, storage.file_offset + value.offset * item, _numel(value) * item)
        return Span(self.path, storage.file_offset, storage.size * item)

    def storage_view(self, name: str) -> StorageView | None:
        from ..t7.objects import T7Tensor

        value = self._entries[name]
        if isinstance(value, T7Tensor):
            if value.storage is None or not _numel(value):
                return None
            key = self._storage_keys[id(value.storage)]
            return StorageView(key, value.storage.size, value.offset, tuple(value.stride))
        return StorageView(self._storage_keys[id(value)], value.size, 0, (1,))

    def read_storage_bytes(self, key: str) -> memoryview:
        from ._untrusted import still_whole

        still_whole(self.path, self._size)
        return memoryview(self._storages[key].data).cast("B")

    def storage_span(self, key: str) -> Span | None:
        storage = self._storages[key]
        if storage.file_offset is None:
            return None
        return Span(self.path, storage.file_offset, storage.size * storage.data.itemsize)

    def tree(self) -> str | None:
        return object_tree(self.file.root) if self.file is not None else None

    def model_summary(self) -> str | None:
        from ..errors import ModelportError
        from ..t7.nn import build_module, describe_module, is_nn_model

        if self.file is None or not is_nn_model(self.file.root):
            return None
        try:
            return describe_module(build_module(self.file.root, source=str(self.path)))
        except ModelportError as exc:
            return f"cannot be rebuilt as a PyTorch module: {exc}"

    def close(self) -> None:
        # Arrays are views of a map of the file: dropping them lets the map go.
        self._entries = {}
        self._storages = {}
        self.file = None


def _children(value):
    """(name component, child) pairs of a table, object or function, in the order to name them."""
    from ..t7.objects import LuaFunction, LuaObject, LuaTable

    if isinstance(value, LuaFunction):
        yield "upvalues", value.upvalues
        return
    fields = value.fields if isinstance(value, LuaObject) else value
    if not isinstance(fields, LuaTable):
        return
    modules = fields.get("modules") if isinstance(value, LuaObject) else None
    if isinstance(modules, LuaTable) and modules and len(modules.array()) == len(modules) \
            and all(isinstance(m, LuaObject) for m in modules.values()):
        for i, module in enumerate(modules.array()):
            yield str(i), module               # nn container: PyTorch-style child index
    else:
        modules = None
    for n, (key, child) in enumerate(fields.items()):
        if modules is not None and child is modules:
            continue
        if isinstance(key, (LuaTable, LuaObject, LuaFunction)):
            yield f"[key{n + 1}]", key
        yield key_name(key), child


def key_name(key) -> str:
    """A table key as one component of a dotted name."""
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    if isinstance(key, float):
        return str(int(key)) if key.is_integer() else repr(key)
    return repr(key) if not hasattr(key, "class_name") else f"[{key.class_name}]"


def _is_buffer(owner, field) -> bool:
    """A tensor an nn module holds besides its learnable weight and bias: running statistics, outputs,
    gradients, pooling indices (torch.nn's buffers and scratch state, not its parameters)."""
    return owner is not None and not owner.class_name.startswith("tds") and field not in ("weight", "bias")


def _is_parameter(value, owner, field) -> bool:
    from ..t7.objects import T7Tensor

    return (owner is not None and field in PARAMETER_FIELDS and isinstance(value, T7Tensor)
            and _numel(value) > 0 and not owner.class_name.startswith("tds"))


def _numel(t) -> int:
    return math.prod(t.size) if t.size else 0      # Torch7: a tensor without dimensions is empty


def _shape(value) -> tuple[int, ...]:
    from ..t7.objects import T7Tensor

    if isinstance(value, T7Tensor):
        return tuple(value.size) if value.size else (0,)
    return (value.size,)


def object_tree(root, max_lines: int = _TREE_LINES) -> str:
    """The object tree: classes, versions, tensor shapes and which objects are shared."""
    from ..t7.objects import LuaFunction, LuaObject, LuaTable, T7Storage, T7Tensor

    numbers: dict[int, int] = {}
    users: dict[int, int] = {}              # id(storage) -> tensors viewing it

    def count(value, seen):
        stack = [value]
        while stack:
            v = stack.pop()
            if isinstance(v, T7Tensor):
                if v.storage is not None and id(v) not in seen:
                    users[id(v.storage)] = users.get(id(v.storage), 0) + 1
                seen.add(id(v))
            elif isinstance(v, (LuaTable, LuaObject, LuaFunction)) and id(v) not in seen:
                seen.add(id(v))
                stack.extend(child for _, child in _children(v))

    count(root, set())
    lines: list[str] = []

    def ref(v) -> str:
        if id(v) not in numbers:
            numbers[id(v)] = len(numbers) + 1
            return f"#{numbers[id(v)]}"
        return f"-> #{numbers[id(v)]} (shared, shown above)"

    stack = [(0, "", root)]
    while stack:
        if len(lines) >= max_lines:
            lines.append(f"… (tree cut at {max_lines} lines)")
            break
        depth, label, v = stack.pop()
        pad = "  " * depth + (f"{label}: " if label else "")
        seen_before = id(v) in numbers
        if isinstance(v, T7Tensor):
            r = ref(v)
            if seen_before:
                lines.append(f"{pad}{v.class_name} {r}")
                continue
            desc = f"{pad}{v.class_name} {r} {list(v.size)}"
            if v.storage is not None:
                s = v.storage
                ref(s)
                desc += f" stride {list(v.stride)} offset {v.offset} in {s.class_name} #{numbers[id(s)]} of {s.size}"
                if users.get(id(s), 0) > 1:
                    desc += f" (shared by {users[id(s)]} tensors)"
            lines.append(desc)
        elif isinstance(v, T7Storage):
            lines.append(f"{pad}{v.class_name} of {v.size} elements {ref(v)}")
        elif isinstance(v, (LuaTable, LuaObject, LuaFunction)):
            r = ref(v)
            if isinstance(v, LuaObject):
                version = "" if v.version is None else f" (V {v.version})"
                head = f"{v.class_name}{version}"
            elif isinstance(v, LuaFunction):
                head = f"function ({len(v.bytecode)} bytes of bytecode)"
            else:
                head = f"table ({len(v)} entries)"
            lines.append(f"{pad}{head} {r}")
            if seen_before:
                continue
            for part, child in reversed(list(_children(v))):
                stack.append((depth + 1, part, child))
        elif isinstance(v, bytes):
            text = v[:60].decode("utf-8", "backslashreplace")
            lines.append(f"{pad}{text!r}{'…' if len(v) > 60 else ''}")
        else:
            lines.append(f"{pad}{v!r}")
    return "\n".join(lines)


# -- recognising the format (no numpy: this runs for `modelport formats`) ----------------

_ASCII_HEAD = re.compile(rb"[ \t\r\n]*([0-8])[ \t\r]*\n[ \t\r\n]*(-?[0-9]+)?")


def looks_like_t7(head: bytes, size: int) -> bool:
    """True when the first bytes of a file parse as the start of a Lua Torch7 object."""
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= struct.unpack_from("<Q", head)[0] <= size - 8:
        return False                            # safetensors
    for e in "<>":
        if len(head) < 4:
            break
        ints = struct.unpack_from(f"{e}{min(len(head) // 4, 4)}i", head)
        tag = ints[0]
        if not 0 <= tag <= 8:
            continue
        if tag == 0:
            return size == 4
        if tag == 1:
            return size >= 12
        if tag == 5:
            return size >= 8 and ints[1:2] in ((0,), (1,))
        if tag in (2, 6):
            return len(ints) >= 2 and 0 <= ints[1] <= size - 8
        if len(ints) < 3 or ints[1] != 1:      # tables, objects, functions start with index 1
            continue
        if tag == 3:
            return 0 <= ints[2] <= size
        if tag == 4:
            n = ints[2]
            return 1 <= n <= 255 and len(head) >= 12 + min(n, 8) and head[12:12 + min(n, 8)].isascii() \
                and head[12:12 + min(n, 8)].decode("ascii").isprintable()
        return 0 <= ints[2] <= size            # functions: bytecode length
    m = _ASCII_HEAD.match(head)
    if m:
        tag = int(m.group(1))
        if tag in (3, 4, 7, 8):
            return m.group(2) == b"1"
        return True
    return False


class T7(Format):
    id = "t7"
    description = "Lua Torch7 torch.save file (binary or ASCII; nn models, tables of tensors)"
    suffixes = (".t7", ".net", ".th", ".asc")
    runnable = True            # an nn model rebuilds as a torch.nn.Module (modelport.t7.nn)

    def sniff(self, path: Path) -> bool:
        if not path.is_file():
            return False
        return looks_like_t7(read_head(path, 64), file_size(path))

    def open(self, path: Path, options: ReadOptions) -> T7Source:
        return T7Source(path, options)

    def write(self, source: TensorSource, dst: Path, options: WriteOptions, progress=None) -> WriteResult:
        from ..t7.writer import write_t7

        # 8-byte longs: what every LP64 Torch (Linux, macOS) reads; t7_long_size is a reading option.
        table = table_of_tensors(source, progress)
        write_t7(table, dst, mode=options.t7_mode or "binary", long_size=8)
        return WriteResult((dst,))


def table_of_tensors(source: TensorSource, progress=None):
    """A Lua table {name = tensor} for ``source``; shared storages stay shared, aliases are the same tensor."""
    import numpy as np

    from .. import dtypes
    from ..t7.objects import LuaTable, T7Storage, T7Tensor
    from ..t7.writer import tensor_class

    root = LuaTable()
    storages: dict[str, T7Storage] = {}
    tensors: dict[str, T7Tensor] = {}
    for name in source.names():
        info = source.info(name)
        try:
            tclass, sclass = tensor_class(info.dtype)
        except UnsupportedError as exc:
            raise UnsupportedError(f"{source.path}: tensor {name!r}: {exc}") from None
        np_dtype = np.dtype(dtypes.get(info.dtype).numpy)
        size = tuple(info.shape) if info.shape else (1,)       # TH has no 0-dim tensors
        if 0 in size:
            tensors[name] = T7Tensor(tclass, info.dtype, (), (), 0, None)
            root[name.encode()] = tensors[name]
            continue
        view = source.storage_view(name)
        if view is not None and len(view.stride) == len(size) and \
                (view.key not in storages or storages[view.key].dtype == info.dtype):
            storage = storages.get(view.key)
            if storage is None:
                storage = storages[view.key] = T7Storage(
                    sclass, info.dtype, _loader(source.read_storage_bytes, view.key, np_dtype, progress))
            tensors[name] = T7Tensor(tclass, info.dtype, size, tuple(view.stride), view.offset, storage)
        else:
            stride, acc = [], 1
            for s in reversed(size):
                stride.append(acc)
                acc *= s
            storage = T7Storage(sclass, info.dtype, _loader(source.read_bytes, name, np_dtype, progress))
            tensors[name] = T7Tensor(tclass, info.dtype, size, tuple(reversed(stride)), 0, storage)
        root[name.encode()] = tensors[name]
    for alias, kept in source.aliases().items():
        if kept in tensors:
            root[alias.encode()] = tensors[kept]
    return root


def _loader(read, key, np_dtype, progress):
    """Reads a storage's bytes when the writer reaches it, so one storage is in memory at a time."""
    import numpy as np

    def load():
        data = read(key)
        if progress:
            progress(len(memoryview(data).cast("B")))
        return np.frombuffer(data, dtype=np_dtype)

    return load


register(T7())
