"""A signal into each kind of writer leaves nothing behind (the full matrix runs in
benchmarks/soak_hostile.py; here one seeded moment for a few writer/signal pairs)."""

from __future__ import annotations

import pytest

from . import signals


@pytest.fixture(scope="module")
def srcs(tmp_path_factory):
    return signals.sources(tmp_path_factory.mktemp("src"), tensors=3000)


@pytest.mark.parametrize("to,sig", [("pt", "HUP"), ("safetensors", "TERM"), ("hf", "INT"), ("meta", "KILL")])
def test_a_signal_mid_write_leaves_nothing(tmp_path, srcs, to, sig):
    dst = tmp_path / ("model" if to in ("hf", "meta") else f"model.{to}")
    result = signals.interrupt(srcs["meta"] if to == "meta" else srcs["big"], dst, to, sig, delay=0.05)
    assert signals.check(result, sig, dst) is None
