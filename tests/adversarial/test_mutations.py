"""Seeded truncations and byte flips of every format: each input is refused cleanly or read and
converted completely (benchmarks/soak_hostile.py runs the same over 100k inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import fuzz

REGRESSIONS = Path(__file__).parent / "regressions"
KINDS = ["pickle", "pt-zip", "pt-own", "pt-legacy", "safetensors", "t7", "t7-ascii", "hf", "meta", "onnx", "torchscript"]


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_mutations_end_cleanly(tmp_path, kind):
    counts = fuzz.run(tmp_path, 60, seed=KINDS.index(kind), kinds=[kind])
    s = fuzz.summary(counts)
    assert s["other"] == 0, s["others"]
    assert s["refused"] > 0


def test_seeded_mutations_of_manifests_end_cleanly(tmp_path):
    """Mutated manifests through ``modelport inspect`` (of the model beside) and ``modelport verify``."""
    counts = fuzz.run(tmp_path, 60, seed=11, kinds=["manifest"])
    s = fuzz.summary(counts)
    assert s["other"] == 0, s["others"]
    assert s["refused"] > 0


def test_every_truncation_of_a_small_checkpoint(tmp_path):
    """A clean exit at every length: nothing half-read passes as a model."""
    seeds = fuzz.seeds(tmp_path / "seeds", ["onnx", "torchscript"])
    for kind in ("pt-zip", "safetensors", "t7", "onnx", "torchscript"):
        data = seeds[kind].read_bytes()
        for n in range(0, len(data), max(1, len(data) // 150)):
            cut = tmp_path / f"cut-{kind}"
            cut.write_bytes(data[:n])
            outcome = fuzz.exercise(cut, None if n % 2 else {"pt-zip": "pt"}.get(kind, kind), tmp_path)
            assert outcome in ("refused", "valid"), (kind, n, outcome)
            assert outcome == "refused" or (kind == "onnx" and n > 0), (kind, n)


@pytest.mark.parametrize("path", sorted(REGRESSIONS.iterdir()), ids=lambda p: p.name)
def test_inputs_the_fuzzing_found(tmp_path, path, capfd):
    import gc

    for fmt in (None, "pt", "safetensors", "t7"):
        assert fuzz.exercise(path, fmt, tmp_path) in ("refused", "valid")
    gc.collect()
    assert "Error" not in capfd.readouterr().err      # CPython prints some failures instead of raising them
