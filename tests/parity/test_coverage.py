"""coverage: every token id's input-embedding row, here of an ONNX candidate whose embedding onnxruntime reads
from the model file itself (the graph is cut without holding the weights)."""

from __future__ import annotations

import pytest

from modelport.parity import coverage

from . import faults

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The reference directory, and ONNX exports of it and of a copy with two embedding rows zeroed."""
    from ..conftest import run_cli_in_process

    root = tmp_path_factory.mktemp("cov")
    state, config = faults.llama_state(seed=41)
    ref = faults.write_dir(root / "ref", state, config)
    bad = faults.write_dir(root / "rows", faults.embedding_rows_zeroed(state, [5, 30]), config)
    for src, dst in ((ref, root / "good.onnx"), (bad, root / "rows.onnx")):
        assert run_cli_in_process("convert", src, dst, "--no-manifest").returncode == 0
    return root, ref


@pytest.mark.parametrize("inline_below", [0, 4096])
def test_every_id_of_an_onnx_candidate_is_looked_up_with_its_weights_left_in_the_file(exported, monkeypatch,
                                                                                       inline_below):
    from modelport.formats import onnx as onnx_format
    from modelport.models.runnable import load_runnable

    tmp_path, ref = exported
    monkeypatch.setattr(onnx_format, "_SESSION_INLINE_BELOW", inline_below)     # 0: the embedding too is read in place
    model = onnx_format.load_for_session(tmp_path / "rows.onnx")
    embedding = next(t for t in model.graph.initializer if t.name.endswith("embed_tokens.weight"))
    assert embedding.data_location == (1 if inline_below == 0 else 0)
    recorded = coverage.reference_rows(load_runnable(ref))
    before = sorted(p.name for p in tmp_path.iterdir())
    got = coverage.check_rows(recorded, load_runnable(tmp_path / "rows.onnx"))
    assert got.first_ids == [5, 30] and got.differing == 2 and not got.passed
    assert coverage.check_rows(recorded, load_runnable(tmp_path / "good.onnx")).passed
    assert sorted(p.name for p in tmp_path.iterdir()) == before                    # nothing written beside
