"""Forgetting and transfer on hand-computed perplexity matrices; the report (registry → PNG, JSON,
MLflow artifacts) and its CLI."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from lineage.cli import app
from lineage.continual.forgetting import (
    PerplexityMatrix,
    backward_transfer,
    chain_matrix,
    domain_forgetting,
    forgetting_metrics,
    forward_transfer,
    learned_at,
)
from lineage.registry.entities import Evaluation, Model
from lineage.workspace import Workspace

NAN = math.nan
# base learned lit; g1 then learned cs; g2 then learned bio.
R = np.array(
    [
        [10.0, 50.0, 40.0],
        [12.0, 20.0, 30.0],
        [15.0, 25.0, 18.0],
    ]
)
REF = {"lit": 100.0, "cs": 60.0, "bio": 45.0}


def matrix(ppl: np.ndarray = R) -> PerplexityMatrix:
    return PerplexityMatrix(
        ("base", "g1", "g2"), ("lit", "cs", "bio"), ppl, (("lit",), ("cs",), ("bio",))
    )


def test_forgetting_on_a_hand_matrix() -> None:
    m = matrix()
    assert learned_at(m) == {"lit": 0, "cs": 1, "bio": 2}
    f = domain_forgetting(m)
    assert set(f) == {"lit", "cs"}  # bio is learned by the last generation: nothing to forget
    assert (f["lit"].before, f["lit"].after, f["lit"].delta, f["lit"].ratio) == (10, 15, 5, 1.5)
    assert (f["cs"].before, f["cs"].after, f["cs"].delta, f["cs"].ratio) == (20, 25, 5, 1.25)
    assert backward_transfer(m) == -5.0  # −mean(5, 5): forgetting
    assert forward_transfer(m, REF) == 12.5  # mean(60 − 50, 45 − 30)
    assert forgetting_metrics(m) == {
        "forgetting/lit": 5.0,
        "forgetting_ratio/lit": 1.5,
        "forgetting/cs": 5.0,
        "forgetting_ratio/cs": 1.25,
        "backward_transfer": -5.0,
    }


def test_sign_flip_equals_gem_on_negated_perplexity() -> None:
    """With one domain per generation, our BWT/FWT are GEM's (Lopez-Paz & Ranzato 2017) on the
    "accuracy" A = −R with reference b = −REF: BWT = 1/(T−1) Σ_{i<T} (A[T−1,i] − A[i,i]),
    FWT = 1/(T−1) Σ_{i≥1} (A[i−1,i] − b_i)."""
    rng = np.random.default_rng(0)
    ppl = rng.uniform(2, 30, size=(4, 4))
    m = PerplexityMatrix(
        tuple(f"g{i}" for i in range(4)),
        ("a", "b", "c", "d"),
        ppl,
        (("a",), ("b",), ("c",), ("d",)),
    )
    ref = dict(zip(m.domains, rng.uniform(20, 60, size=4), strict=True))
    acc, b = -ppl, -np.array([ref[d] for d in m.domains])
    t = 4
    gem_bwt = sum(acc[t - 1, i] - acc[i, i] for i in range(t - 1)) / (t - 1)
    gem_fwt = sum(acc[i - 1, i] - b[i] for i in range(1, t)) / (t - 1)
    assert backward_transfer(m) == pytest.approx(gem_bwt)
    assert forward_transfer(m, ref) == pytest.approx(gem_fwt)


def test_limiting_cases_and_missing_values() -> None:
    same = matrix(np.array([[10.0, 50, 40], [10, 20, 30], [10, 20, 18]]))
    assert backward_transfer(same) == 0.0
    assert {d: (f.delta, f.ratio) for d, f in domain_forgetting(same).items()} == {
        "lit": (0.0, 1.0),
        "cs": (0.0, 1.0),
    }
    holes = R.copy()
    holes[2, 1] = NAN  # the last generation was not evaluated on cs
    assert set(domain_forgetting(matrix(holes))) == {"lit"}
    assert backward_transfer(matrix(holes)) == -5.0
    assert forward_transfer(matrix(), {}) is None  # no reference
    one = PerplexityMatrix(("base",), ("lit",), np.array([[10.0]]), (("lit",),))
    assert domain_forgetting(one) == {} and backward_transfer(one) is None
    with pytest.raises(ValueError):
        PerplexityMatrix(("a",), ("x", "y"), np.zeros((1, 1)), ((),))


def _model(i: int, name: str, domains: list[str]) -> Model:
    now = datetime(2025, 1, 1)
    return Model(i, name, "", "roberta", "mlm", 2, 32, 2, 64, 400, 1, "fp", domains, "", now)


def _eval(i: int, model: str, domain: str, ppl: float) -> Evaluation:
    return Evaluation(i, model, domain, 0, math.log(ppl), ppl, 10, None, datetime(2025, 1, 1))


def test_chain_matrix_takes_the_latest_evaluation_and_new_domains() -> None:
    chain = [_model(1, "base", ["lit"]), _model(2, "g1", ["lit", "cs"])]
    evals = [
        _eval(1, "base", "lit", 99.0),  # superseded by id 3
        _eval(3, "base", "lit", 10.0),
        _eval(2, "base", "cs", 50.0),
        _eval(4, "g1", "lit", 12.0),
        _eval(5, "g1", "cs", 20.0),
        _eval(6, "other", "cs", 1.0),  # not in the chain
    ]
    m = chain_matrix(chain, evals)
    assert m.models == ("base", "g1") and m.domains == ("lit", "cs")
    assert m.learned == (("lit",), ("cs",))
    np.testing.assert_array_equal(m.ppl, [[10.0, 50.0], [12.0, 20.0]])


def _hand_family(ws: Workspace) -> str:
    """teacher-lit -adapt-> lit-cs with hand-written evaluations and an MLflow run."""
    reg = ws.registry
    base = reg.model("teacher-lit")
    ws.register_model(base.path, name="lit-cs", domains=["literature", "cs"])
    client = MlflowClient(ws.tracking_uri)
    exp = client.get_experiment_by_name("lineage") or client.create_experiment("lineage")
    exp_id = exp if isinstance(exp, str) else exp.experiment_id
    run_id = client.create_run(exp_id).info.run_id
    reg.add_edge("teacher-lit", "lit-cs", "adapt", mlflow_run_id=run_id)
    for model, domain, ppl in [
        ("teacher-lit", "literature", 10.0),
        ("teacher-lit", "cs", 40.0),
        ("lit-cs", "literature", 14.0),
        ("lit-cs", "cs", 20.0),
        ("student", "cs", 80.0),
    ]:
        reg.add_evaluation(model, domain, loss=math.log(ppl), ppl=ppl, mlflow_run_id=run_id)
    return run_id


def test_report_cli_writes_png_json_and_mlflow_artifacts(
    family_ws: Workspace, tmp_path: Path
) -> None:
    run_id = _hand_family(family_ws)
    plot = tmp_path / "out" / "forgetting.png"
    args = ["-w", str(family_ws.root), "report", "forgetting", "lit-cs", "--plot", str(plot)]
    result = CliRunner().invoke(app, [*args, "--reference", "student", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(plot.with_suffix(".json").read_text()) == data
    chain = data["chains"]["lit-cs"]
    assert chain["chain"] == ["teacher-lit", "lit-cs"]
    assert chain["forgetting"]["literature"]["delta"] == pytest.approx(4.0)
    assert chain["forgetting"]["literature"]["ratio"] == pytest.approx(1.4)
    assert chain["backward_transfer"] == pytest.approx(-4.0)
    assert chain["forward_transfer"] == pytest.approx(80.0 - 40.0)
    assert data["ppl"] == [[10.0, 40.0], [14.0, 20.0]] and data["domains"] == ["literature", "cs"]
    listed = MlflowClient(family_ws.tracking_uri).list_artifacts(run_id, "forgetting")
    assert {Path(a.path).name for a in listed} == {"forgetting.png", "forgetting.json"}
    table = CliRunner().invoke(app, [*args[:-2], "--no-log-artifacts"])
    assert table.exit_code == 0 and "literature +4.00 (1.40×)" in table.stdout
