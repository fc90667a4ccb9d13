"""Perplexities compare like with like: every evaluation records its protocol (blocks, block
size, digest of the token ids), lookups pick one protocol per domain instead of the latest
number, and the router's measurements are stored with theirs and reused."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from lineage.models.evaluation import protocol_of
from lineage.registry.entities import Evaluation, comparable
from lineage.routing.router import Router
from lineage.workspace import Workspace

NOW = datetime.now(UTC)


def test_protocol_is_the_blocks_not_their_dtype() -> None:
    blocks = np.arange(64, dtype=np.uint16).reshape(4, 16)
    p = protocol_of(blocks)
    assert (p.n_blocks, p.block_size) == (4, 16) and len(p.sample_digest) == 64
    assert protocol_of(blocks.astype(np.int64)) == p  # the ids, whatever their dtype
    assert protocol_of(blocks[:3]) != p and protocol_of(blocks[:, ::-1]) != p
    assert protocol_of(blocks, "mlm") != p  # MLM: the mask seed fixes the targets
    assert protocol_of(blocks, "mlm", 1) != protocol_of(blocks, "mlm")


def ev(i: int, model: str, ppl: float, blocks: int | None, digest: str = "a") -> Evaluation:
    size = None if blocks is None else 128
    sample = None if blocks is None else digest * 64
    return Evaluation(i, model, "cs", 0, 1.0, ppl, 10, None, NOW, blocks, size, sample)


def test_comparable_picks_one_protocol_per_domain() -> None:
    evals = [
        ev(1, "a", 82.6, 36, "x"),  # a alone on 36 blocks
        ev(2, "a", 94.8, 8),  # a and b on the same 8 blocks
        ev(3, "b", 90.0, 8),
        ev(4, "b", 70.0, 16, "z"),  # b's latest, on other blocks: not compared with a's
        ev(5, "c", 5.0, None),  # before protocols were recorded
    ]
    picked = comparable(evals)
    assert {k: e.ppl for k, e in picked.items()} == {("a", "cs"): 94.8, ("b", "cs"): 90.0}
    assert {k: e.ppl for k, e in comparable(evals, {"a"}).items()} == {("a", "cs"): 82.6}
    # Ties between protocols: more blocks first, then the newest.
    assert comparable(evals, {"b"})[("b", "cs")].ppl == 70.0
    assert comparable([*evals, ev(6, "a", 93.0, 8)], {"a", "b"})[("a", "cs")].ppl == 93.0
    assert comparable(evals, {"c"})[("c", "cs")].ppl == 5.0  # only unrecorded: still usable


def test_router_measurements_are_stored_with_their_protocol_and_reused(
    family_ws: Workspace,
) -> None:
    reg = family_ws.registry
    shard = reg.shards("cs", split="train")[0]
    before = len(reg.evaluations())

    def route() -> tuple[Router, float]:
        router = Router.from_workspace(
            family_ws, teachers=["teacher-lit"], student="student", measure=True
        )
        (a,) = router.route([shard])
        (score,) = a.scores
        assert score.ppl_source == "measured" and score.ppl is not None
        return router, score.ppl

    first, ppl = route()
    assert first.measurer.measured == 2  # type: ignore[union-attr]  # teacher and student
    stored = reg.evaluations()[before:]
    assert {(e.model, e.domain) for e in stored} == {("teacher-lit", "cs"), ("student", "cs")}
    assert all(e.protocol is not None and e.protocol.n_blocks >= 1 for e in stored)
    assert len({e.protocol for e in stored}) == 1  # the same sample blocks for both
    second, again = route()
    assert second.measurer.measured == 0 and again == pytest.approx(ppl)  # type: ignore[union-attr]
    assert len(reg.evaluations()) == before + 2
