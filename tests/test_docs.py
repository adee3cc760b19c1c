"""Every shell command in README.md and docs/*.md, run exactly as written.

The commands are read from the fenced blocks (plain, sh/bash/console, and the `run:` steps of YAML
blocks). Each is either run, in a temporary directory holding the files it names (the placeholders
`model.pt`, `config.json`, `llama-hf/` … are made here from tiny seeded models), or listed below as
skipped with the reason. A command found in the docs that this file does not list fails the test, so a
new example is run (or its reason stated) before it is published.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_INFO = {"", "sh", "bash", "shell", "console"}
COMMAND_START = ("modelport ", "python ", "python3 ", "pip ")

# Commands that are not run, each with the reason.
SKIPPED = {
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": "installs from the network",
    "pip install 'modelport[cpu,hf]'": "installs from the network",
}
# Install-then-use lines: the install needs the network; everything after the last install runs.
INSTALL = re.compile(r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install [^&]+&& ")
# The suite's own command: running it here would run this test inside itself.
SELF = "python -m pytest"
# Commands that are known to fail: run, expected to fail, with the reason (none today).
XFAIL: dict[str, str] = {}


def _blocks(text: str):
    """(info string, body) of every fenced block."""
    for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```", text, re.M | re.S):
        yield m.group(1).strip(), m.group(2)


def _commands(path: Path) -> list[tuple[int, str]]:
    """(block number, command) of every command, in the order written."""
    out = []
    for n, (info, body) in enumerate(_blocks(path.read_text(encoding="utf-8"))):
        if info in SHELL_INFO:
            out += [(n, line.strip()) for line in body.splitlines() if line.strip().startswith(COMMAND_START)]
        elif info in ("yaml", "yml"):
            yaml = pytest.importorskip("yaml")
            out += [(n, " ".join(step["run"].split())) for step in _steps(yaml.safe_load(body)) if "run" in step]
    return out


def bare(command: str) -> str:
    """The command without its trailing comment (how SKIPPED and XFAIL name it)."""
    return re.split(r"\s+# ", command, maxsplit=1)[0].strip()


def _steps(workflow: dict):
    if not isinstance(workflow, dict) or not isinstance(workflow.get("jobs"), dict):
        return                     # a YAML block that is not a CI workflow (a batch jobs file, say)
    for job in workflow["jobs"].values():
        yield from job.get("steps", [])


def all_commands() -> list[tuple[str, int, str]]:
    return [(p.name, n, c) for p in DOCS for n, c in _commands(p)]


# -- the placeholders ---------------------------------------------------------------------------------

def _tiny_gpt2_pt(d: Path) -> None:
    shutil.copy(ROOT / "examples" / "tiny-gpt2.pt", d / "model.pt")
    shutil.copy(ROOT / "examples" / "tiny-gpt2.config.json", d / "config.json")


def _examples(d: Path) -> None:
    shutil.copytree(ROOT / "examples", d / "examples")


def _examples_converted(d: Path) -> None:
    _examples(d)
    _modelport(d, "convert", "examples/tiny-gpt2.pt", "out/tiny-gpt2", "--to", "hf", "--config",
               "examples/tiny-gpt2.config.json")


def _face_net(d: Path) -> None:
    shutil.copy(ROOT / "fixtures" / "t7nn" / "face-detector-new_2013.net", d / "face.net")  # 1x32x32 grayscale input


def _graph_t7(d: Path) -> None:     # gModule({a, b}, {CAddTable(){b, Linear(1, 2)(a)}}): inputs 2x1 and 2x2
    shutil.copy(ROOT / "fixtures" / "t7nn" / "gmodule_with_linear_identity.t7", d / "graph.t7")


def _hf_dirs(d: Path) -> None:
    from .models import tiny

    tiny.llama(seed=11).save_pretrained(d / "llama-hf")
    tiny.gpt2(seed=12).save_pretrained(d / "gpt2")
    _modelport(d, "convert", "llama-hf", "llama.safetensors")
    _modelport(d, "convert", "gpt2", "gpt2-fp16", "--to", "hf", "--dtype", "fp16")
    (d / "models").mkdir()
    tiny.llama(seed=13, max_position_embeddings=256).save_pretrained(d / "models" / "llama-hf")


# The placeholders a block's commands read: (what a command of the block says, the maker). The commands of
# one block run in one directory, in the order written, as a reader would type them; each block starts
# from a fresh directory holding only the placeholders it reads.
SETUP = [("convert model.pt ", _tiny_gpt2_pt), ("convert out/tiny-gpt2 ", _examples_converted),
         ("examples/tiny-gpt2.pt ", _examples), ("face.net", _face_net), ("graph.t7", _graph_t7),
         ("llama-hf", _hf_dirs)]


def _bin(tmp: Path) -> Path:
    """A `modelport` on PATH that is this checkout's."""
    d = tmp / "bin"
    d.mkdir(exist_ok=True)
    exe = d / "modelport"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m modelport "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    (d / "python").symlink_to(sys.executable)
    return d


def _env(tmp: Path) -> dict:
    """The environment of a documented command: this checkout's `modelport` (made by _bin) first on PATH."""
    path = os.pathsep.join([str(tmp / "bin"), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "BROWSER": "true",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _modelport(d: Path, *args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "modelport", *args], cwd=d, capture_output=True, text=True,
                       env=_env(d.parent))
    assert r.returncode == 0, f"setting up {args}: {r.stderr}"


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, env=_env(cwd.parent),
                          timeout=600)


# -- the tests ----------------------------------------------------------------------------------------

def test_every_documented_command_is_found_and_listed():
    found = [c for _, _, c in all_commands()]
    assert len(found) >= 10, f"too few commands found ({found}): the extraction is broken"
    unlisted = [c for c in found if not (bare(c) in SKIPPED or INSTALL.match(c) or c.startswith("modelport "))]
    assert not unlisted, f"commands in the docs that this test neither runs nor skips with a reason: {unlisted}"


def _to_run(doc: str) -> dict[int, list[str]]:
    """Block number -> the commands to run (an install line's tail; none of SKIPPED; not the suite itself)."""
    out: dict[int, list[str]] = {}
    for d, n, c in all_commands():
        if d != doc or bare(c) in SKIPPED:
            continue
        m = INSTALL.match(c)
        rest = c[m.end():] if m else c
        if rest != SELF:
            out.setdefault(n, []).append(rest)
    return out


@pytest.mark.parametrize("doc", sorted({p.name for p in DOCS}))
def test_documented_commands_run_as_written(doc, tmp_path):
    blocks = _to_run(doc)
    if not blocks:
        pytest.skip(f"{doc} shows no shell command")
    _bin(tmp_path)
    failed, expected = [], []
    for n, commands in blocks.items():
        work = tmp_path / f"block{n}"
        work.mkdir()
        text = "\n".join(commands)
        for said, setup in SETUP:
            if said in text:
                setup(work)
        for command in commands:
            r = _run(command, work)
            if bare(command) in XFAIL:
                expected.append((bare(command), r.returncode))
                continue
            if r.returncode != 0 or "Traceback" in r.stderr:
                failed.append(f"{command}\n  exit {r.returncode}: {r.stderr.strip()[-600:]}")
    assert not failed, "documented commands that fail as written:\n" + "\n".join(failed)
    still_failing = [c for c, rc in expected if rc != 0]
    if still_failing:
        pytest.xfail("; ".join(f"{c}: {XFAIL[c]}" for c in still_failing))
