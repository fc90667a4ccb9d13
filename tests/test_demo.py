"""`lineage demo --quick` end to end: the registry, the MLflow runs and the files it leaves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from lineage.cli import app
from lineage.workspace import Workspace


@pytest.mark.slow
def test_quick_demo_builds_the_family(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", str(root), "--quick"])
    assert result.exit_code == 0, result.output
    for heading in ("1. domains", "3. generations", "5. adaptation and forgetting", "6. summary"):
        assert heading in result.output

    ws = Workspace.open(root)
    reg = ws.registry
    names = {m.name for m in reg.models()}
    assert {"g1", "expert-cs", "expert-bio", "g2-sl", "g2-ki", "g2-aki", "g2-aki-ki"} <= names
    assert {"g3-from-g2-ki", "g3-from-g2-sl", "g3-from-g1"} <= names
    edges = {(e.parent, e.child, e.kind) for e in reg.edges()}
    # The router's plan, measured: G1 teaches a literature shard only where it beats the
    # student and the shard's unigram model (8 quick steps rarely do: then self-learning).
    (plan,) = [p for p in reg.plans() if p.student == "g2-init"]
    for shard in plan.spec["shards"]:
        chosen = [c for c in shard["scores"] if c["model"] == shard["teacher"]]
        assert all(c["eligible"] and c["ppl_source"] == "measured" for c in chosen)
        assert ("g1", "g2-ki", "ki") in edges or shard["teacher"] is None
    assert ("g2-ki", "g3-from-g2-ki", "ki") in edges
    assert ("g1", "g2-aki", "grow") in edges and ("g1", "g2-aki-ki", "ki") in edges
    assert reg.generation("g3-from-g2-ki") == reg.generation("g2-ki") + 1  # 3 when G1 taught
    adapted = {e.child: e for e in reg.edges() if e.parent == "g2-ki" and e.kind == "adapt"}
    assert {"g2-adapt-sl", "g2-adapt-ki", "g2-adapt-ki-replay", "g2-adapt-ki-replay-selfki"} <= set(
        adapted
    )
    teachers = {e.parent for e in reg.edges("g2-adapt-ki") if e.kind == "ki"}
    # The router chooses among the first generation; an expert that is not yet better than the
    # student and the unigram model on its shards is not eligible (quick runs train the
    # experts only a few steps, so often nobody is).
    assert teachers <= {"g1", "expert-cs", "expert-bio"}
    assert {e.domain for e in reg.evaluations(model="g2-adapt-ki")} >= {"cs", "bio", "literature"}
    assert reg.latest_proximity("overlap") is not None

    client = MlflowClient(ws.tracking_uri)
    experiment = client.get_experiment_by_name(ws.config.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    made = [r for r in runs if "lineage.model" in r.data.tags]
    assert all(r.info.status == "FINISHED" for r in made)
    grown = [r for r in made if r.data.tags["lineage.strategy"] == "grow"]
    trained = [r for r in made if r not in grown]
    assert len(trained) == 13 and len(grown) == 1  # 13 trainings, one growth (g2-aki)
    assert grown[0].data.metrics["grown_loss"] > 0
    ki_run = next(r for r in trained if r.data.tags["lineage.model"] == "g2-adapt-ki")
    assert any(k.startswith("forgetting/") for k in ki_run.data.metrics)
    assert any(k.startswith("alpha/") for k in ki_run.data.metrics) == bool(teachers)

    for png in (
        "proximity.png",
        "valid-ppl.png",
        "forgetting.png",
        "forgetting-curves.png",
        "lineage.png",
        "tradeoff.png",
    ):
        assert (ws.plots_dir / png).stat().st_size > 5_000, png
    files = {f.path for f in client.list_artifacts(ki_run.info.run_id, "compare")}
    assert files == {"compare/tradeoff.png", "compare/tradeoff.json"}
    (demo_run,) = [r for r in runs if r.data.tags.get("lineage.study") == "demo"]
    logged = {f.path for f in client.list_artifacts(demo_run.info.run_id, "plots")}
    assert {"plots/lineage.svg", "plots/tradeoff.png"} <= logged
    summary = json.loads((root / "demo-summary.json").read_text())
    assert {"proximity", "ki_vs_sl", "generations", "growth", "adaptation"} <= set(summary)
    assert summary["ki_vs_sl"][0]["run"] == "g2-sl"
    table_rows = [line for line in result.output.splitlines() if line.startswith("│")]
    for row in summary["ki_vs_sl"] + summary["generations"]:
        (line,) = [line for line in table_rows if line.startswith(f"│ {row['run']} ")]
        # A grown model may start below the target: reached at step 0, not "not reached".
        assert ("not reached" in line) == (row["steps_to_baseline"] is None), line
    ws.close()


def test_demo_refuses_a_used_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["demo", str(tmp_path), "--quick"])
    assert result.exit_code == 1 and "not empty" in result.output
    assert (tmp_path / "keep.txt").read_text() == "mine"
