"""All the heads of a round in one onnxruntime call: the very scores of one call per head."""

from __future__ import annotations

import numpy as np
import pytest

from wyoming_oww_rk3588.backends.cpu import CpuHeads
from wyoming_oww_rk3588.heads import HeadRunner
from wyoming_oww_rk3588.models.registry import ModelRegistry

REGISTRY = ModelRegistry()
BUILTIN = [REGISTRY.resolve(name) for name in REGISTRY.models]


def _windows(models, batch: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Embedding-like values: openWakeWord's embeddings lie within about +-80.
    return [(rng.standard_normal((batch, m.window, 96)) * 20).astype(np.float32) for m in models]


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_every_builtin_head_scores_bit_for_bit_as_its_own_session(batch):
    heads = CpuHeads()
    windows = _windows(BUILTIN, batch, seed=batch)
    merged = heads.score_many(BUILTIN, windows)
    for model, window, scores in zip(BUILTIN, windows, merged):
        assert scores.shape == (batch, model.n_outputs)
        np.testing.assert_array_equal(scores, heads.score(model, window))


def test_the_builtin_heads_of_opsets_13_and_14_go_in_one_call():
    heads = CpuHeads()
    plan = heads._plan(BUILTIN)
    opsets = {tuple((o.domain, o.version) for o in heads._graphs[m.name].opset_import) for m in BUILTIN}
    assert len(opsets) == 2 and len(plan) == 1  # hey_rhasspy is opset 14, the others 13
    assert sorted(i for _, members, _ in plan for i in members) == list(range(len(BUILTIN)))


def test_a_head_is_lifted_to_a_newer_opset_only_where_its_ops_mean_the_same():
    from wyoming_oww_rk3588 import graphs

    heads = CpuHeads()
    for model in BUILTIN:
        heads.load(model)
    mycroft = heads._graphs["hey_mycroft"]  # Flatten, Gemm, ReduceMean, Add, Sub, Mul, Div, Pow, Sqrt, ...
    assert graphs.same_at_opset(mycroft, 13) and graphs.same_at_opset(mycroft, 14)
    assert not graphs.same_at_opset(mycroft, 18)  # ReduceMean-18 takes its axes as an input
    assert not graphs.same_at_opset(heads._graphs["hey_rhasspy"], 13)  # never down


def test_any_subset_in_any_order_gives_the_same_scores_and_sessions_stay_bounded():
    heads = CpuHeads()
    rng = np.random.default_rng(1)
    for _ in range(CpuHeads.MERGED_SESSIONS + 4):
        models = [BUILTIN[i] for i in rng.permutation(len(BUILTIN))[: rng.integers(2, len(BUILTIN) + 1)]]
        windows = _windows(models, 5, seed=int(rng.integers(1 << 30)))
        for model, window, scores in zip(models, windows, heads.score_many(models, windows)):
            np.testing.assert_array_equal(scores, heads.score(model, window))
    assert len(heads._merged) <= CpuHeads.MERGED_SESSIONS


def test_a_failing_merged_call_is_redone_head_by_head(caplog):
    class Failing(CpuHeads):
        def score_many(self, models, windows):
            raise RuntimeError("merged session broke")

    runner = HeadRunner([Failing()], cpu_factory=CpuHeads)
    models = BUILTIN[:3]
    windows = _windows(models, 4)
    scores = runner.score_many(models, windows)
    for model, window, got in zip(models, windows, scores):
        np.testing.assert_array_equal(got, CpuHeads().score(model, window))
    assert "scoring them one by one" in caplog.text



def test_a_set_of_heads_scored_again_reuses_its_merged_session():
    """Building a merged session costs tens of ms: each round of the same set must find it."""
    heads = CpuHeads()
    models = BUILTIN[:5]
    windows = _windows(models, 1)
    heads.score_many(models, windows)
    first = heads._plan(models)
    heads.score_many(models, windows)
    assert heads._plan(models) is first and len(heads._merged) == 1
