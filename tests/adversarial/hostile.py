"""Builders of hostile model files, shared by the adversarial tests and benchmarks/soak_hostile.py.

Everything here is made from bytes written by hand or by modelport's own writers (no torch), so the
soak can run in a lean process. Each builder returns the path it wrote.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# -- pickles by hand --------------------------------------------------------------------------------

def _str(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -(1 << 31) <= v < (1 << 31):
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tuple(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def tensor_call(key: str, numel: int, offset: int, shape, stride, storage: str = "FloatStorage", build: dict | None = None) -> bytes:
    """``_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())`` as protocol-2 opcodes,
    optionally followed by a BUILD opcode applying ``build`` to the result (the defect-1 attack)."""
    out = b"ctorch._utils\n_rebuild_tensor_v2\n(("
    out += _str("storage") + b"ctorch\n" + storage.encode() + b"\n" + _str(key) + _str("cpu") + _int(numel) + b"tQ"
    out += _int(offset) + _tuple(shape) + _tuple(stride) + b"\x89ccollections\nOrderedDict\n)RtR"
    if build:
        out += b"}"
        for k, v in build.items():
            out += _str(k) + (_tuple(v) if isinstance(v, tuple) else _int(v)) + b"s"
        out += b"b"
    return out


def state_dict_pickle(tensors: dict[str, bytes]) -> bytes:
    """``{name: <opcodes building the value>}`` as one protocol-2 pickle."""
    out = b"\x80\x02}("
    for name, value in tensors.items():
        out += _str(name) + value
    return out + b"u."


class _Reduce:
    """An object whose pickle calls ``fn(*args)`` on load: the classic code-execution payload."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that would create ``marker`` if any of them ran, in every protocol and several spellings."""
    cmd = f"touch {marker}"
    out: dict[str, bytes] = {}
    calls = {
        "os.system": _Reduce(os.system, (cmd,)),
        "eval": _Reduce(eval, (f"__import__('os').system({cmd!r})",)),
        "exec": _Reduce(exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess": _Reduce(__import__("subprocess").call, (["touch", str(marker)],)),
        "open": _Reduce(open, (str(marker), "w")),
    }
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        for name, obj in calls.items():
            out[f"{name}-p{proto}"] = pickle.dumps({"w": obj}, protocol=proto)
    posix = "posix" if os.name == "posix" else "nt"
    out["inst-p0"] = f"(S'{cmd}'\ni{posix}\nsystem\n.".encode()
    out["obj-p1"] = b"(c" + posix.encode() + b"\nsystem\n" + f"X{chr(len(cmd))}\0\0\0{cmd}".encode("latin1") + b"o."
    out["stack-global-p4"] = b"\x80\x04" + b"\x8c\x05" + posix.encode()[:5].ljust(5) + b"\x8c\x06system\x93" + \
        b"\x8c" + bytes([len(cmd)]) + cmd.encode() + b"\x85R."
    out["getattr-chain"] = b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\nX\x02\x00\x00\x00os\x85RX\x06\x00\x00\x00system\x86R" + \
        _str(cmd) + b"\x85R."
    out["copyreg-reconstructor"] = b"\x80\x02ccopyreg\n_reconstructor\nccollections\nOrderedDict\ncbuiltins\nobject\nN\x87R."
    out["torch-load-from-bytes"] = b"\x80\x02ctorch.storage\n_load_from_bytes\nC\x01x\x85R."
    out["numpy-reconstruct"] = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nK\x00\x85R."
    out["build-on-function"] = b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00a" + _str(cmd) + b"sb."
    out["newobj-on-allowed"] = b"\x80\x02ccollections\nOrderedDict\n)\x81."
    # EXT1 looks the global up through copyreg's extension registry, then find_class
    import copyreg

    copyreg.add_extension(posix, "system", 0x7A)
    try:
        out["ext1"] = b"\x80\x02\x82\x7a" + _str(cmd) + b"\x85R."
    finally:
        copyreg.remove_extension(posix, "system", 0x7A)
    out["persistent-evil"] = b"\x80\x02" + _str("x") + b"Q."
    out["rebuild-with-evil-storage"] = state_dict_pickle({"w": b"ctorch._utils\n_rebuild_tensor_v2\n(cos\nsystem\nK\x00(K\x01t(K\x01t\x89ccollections\nOrderedDict\n)RtR"})
    return out


# -- containers ---------------------------------------------------------------------------------------

def write_pt_zip(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None, *, prefix: str = "archive",
                 compress: set[str] = frozenset(), byteorder: bytes = b"little") -> Path:
    """A torch zip checkpoint from a given data.pkl and storages (members named as torch names them)."""
    with zipfile.ZipFile(path, "w") as zf:
        def add(name, data):
            method = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            zf.writestr(zipfile.ZipInfo(f"{prefix}/{name}"), data, compress_type=method)

        add("data.pkl", pkl)
        add("byteorder", byteorder)
        for key, data in (storages or {}).items():
            add(f"data/{key}", data)
        add("version", b"3\n")
    return path


def write_pt_legacy(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A legacy (non-zip) torch checkpoint: magic, protocol, system info, the object pickle, keys, storages."""
    storages = storages or {}
    out = io.BytesIO()
    for obj in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        out.write(pickle.dumps(obj, protocol=2))
    out.write(pkl)
    out.write(pickle.dumps(list(storages), protocol=2))
    for data in storages.values():
        out.write(struct.pack("<q", len(data) // 4) + data)
    path.write_bytes(out.getvalue())
    return path


def write_safetensors(path: Path, header: dict | bytes | str, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode("utf-8", "surrogatepass")
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def t7_tensor_file(path: Path, size, stride, offset: int = 1, storage_elems: int = 4) -> Path:
    """A binary .t7 holding one torch.FloatTensor (sizes, strides, 1-based offset) over a FloatStorage."""
    def s(b: bytes) -> bytes:
        return struct.pack("<i", len(b)) + b

    out = struct.pack("<ii", 4, 1) + s(b"V 1") + s(b"torch.FloatTensor") + struct.pack("<i", len(size))
    out += struct.pack(f"<{len(size)}q", *size) + struct.pack(f"<{len(stride)}q", *stride) + struct.pack("<q", offset)
    out += struct.pack("<ii", 4, 2) + s(b"V 1") + s(b"torch.FloatStorage") + struct.pack("<q", storage_elems)
    out += struct.pack(f"<{storage_elems}f", *range(storage_elems))
    path.write_bytes(out)
    return path


def good_pt_zip(path: Path, seed: int = 0, n: int = 3) -> Path:
    """A small, valid checkpoint: n float32 tensors of seeded values, contiguous and one transposed view."""
    rng = random.Random(seed)
    tensors, storages = {}, {}
    for i in range(n):
        rows, cols = rng.randint(1, 5), rng.randint(1, 6)
        storages[str(i)] = struct.pack(f"<{rows * cols}f", *(rng.uniform(-1, 1) for _ in range(rows * cols)))
        stride = (cols, 1) if i % 2 == 0 else (1, rows)
        tensors[f"layer{i}.weight"] = tensor_call(str(i), rows * cols, 0, (rows, cols), stride)
    return write_pt_zip(path, state_dict_pickle(tensors), storages)


# -- running the command line as a user would, measured ------------------------------------------------

# The measured command runs as the child of this small parent, as /usr/bin/time runs it: on Linux a child's
# ru_maxrss starts from the high-water mark of the process it was forked from, so wait4 in the (large) test
# process would report at least the test process's own peak. The parent forks before it has grown, caps the
# child's CPU time and writes the child's rusage to the file descriptor it is given.
_MEASURE_PARENT = """
import os, resource, sys
fd, cpu = int(sys.argv[1]), int(sys.argv[2])
pid = os.fork()
if pid == 0:
    os.close(fd)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    try:
        os.execv(sys.argv[3], sys.argv[3:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
os.write(fd, repr((status, ru.ru_maxrss, ru.ru_utime + ru.ru_stime)).encode())
"""


def run_measured(args: list[str], timeout: float = 10.0, cwd=None, module: str = "modelport") -> dict:
    """Run ``python -m modelport ARGS`` in a fresh process: exit code (None when it ran past ``timeout`` seconds of
    CPU time, or hung for far longer than that), output, wall and CPU seconds, and the peak RSS of that process
    alone. CPU time and peak RSS do not depend on how loaded the machine is; wall time does, so tests leave it
    alone."""
    import ast
    import math
    import signal
    import subprocess
    import tempfile
    import threading

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", module, *map(str, args)]
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        start = time.monotonic()
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _MEASURE_PARENT, str(write_fd),
                                     str(max(1, math.ceil(timeout))), *command], stdout=fo, stderr=fe, env=env, cwd=cwd,
                                    stdin=subprocess.DEVNULL, pass_fds=(write_fd,), start_new_session=True)
        finally:
            os.close(write_fd)
        hung = []

        def kill():             # a hang (blocked, using no CPU): the whole group, parent and child
            hung.append(1)
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(max(60.0, 6 * timeout), kill)
        timer.start()
        with os.fdopen(read_fd, "rb") as pipe:
            report = pipe.read()
        proc.wait()
        timer.cancel()
        wall = time.monotonic() - start
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if hung:
        return {"rc": None, "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace"),
                "raw_stdout": out, "raw_stderr": err, "wall": wall, "cpu": None, "rss": None}
    if not report:
        raise RuntimeError(f"the measuring parent reported nothing (exit {proc.returncode}): {err[-2000:]!r}")
    status, maxrss_kb, cpu = ast.literal_eval(report.decode())
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL)
    return {"rc": None if killed else os.waitstatus_to_exitcode(status), "stdout": out.decode("utf-8", "replace"),
            "stderr": err.decode("utf-8", "replace"), "raw_stdout": out, "raw_stderr": err, "wall": wall, "cpu": cpu,
            "rss": maxrss_kb * 1024}


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One seeded mutation: byte flips, interesting integers, truncation, insertion, deletion or duplication."""
    if not data:
        return bytes([rng.randrange(256)])
    b = bytearray(data)
    kind = rng.randrange(7)
    if kind == 0:                                   # flip a few bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:                                 # random bytes
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 2:                                 # an interesting integer at an aligned spot
        v = rng.choice([0, 1, -1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**62, 2**63 - 1, -2**63])
        width = rng.choice([1, 2, 4, 8])
        i = rng.randrange(0, max(1, len(b) - width + 1))
        i -= i % width
        b[i:i + width] = (v % (1 << (8 * width))).to_bytes(width, "little")
    elif kind == 3:                                 # truncation
        return bytes(b[:rng.randrange(len(b))])
    elif kind == 4:                                 # insertion
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 5:                                 # deletion
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 16)]
    else:                                           # duplicate a chunk
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 64))
        k = rng.randrange(len(b) + 1)
        b[k:k] = b[i:j]
    return bytes(b)


_JSON_NASTIES = ["NaN", "Infinity", "-Infinity", "1" * 5000, "1e400", '"\\ud800"', "[" * 3000 + "]" * 3000,
                 '{"a":' * 3000 + "1" + "}" * 3000, "-1", "0", "1e30", "true", "null", '"4096"', "[]", "{}", "1.5",
                 '"\\u001b]0;pwned\\u0007"', str(2**64), "-0"]


def mutate_json(text: str, rng: random.Random) -> bytes:
    """Replace one JSON value (found by a seeded scan) with something hostile, or mutate the bytes."""
    if rng.random() < 0.3:
        return mutate(text.encode("utf-8"), rng)
    doc = json.loads(text)
    paths = []

    def walk(v, path):
        paths.append(path)
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, path + (k,))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, path + (i,))

    walk(doc, ())
    target = rng.choice(paths)
    marker = "__HOSTILE__"
    if not target:
        return rng.choice(_JSON_NASTIES).encode()
    parent = doc
    for k in target[:-1]:
        parent = parent[k]
    parent[target[-1]] = marker
    return json.dumps(doc).replace(f'"{marker}"', rng.choice(_JSON_NASTIES), 1).encode()
