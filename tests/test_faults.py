"""Crash safety: every job killed with SIGKILL at each of its step boundaries (``fault_point``)
leaves the workspace untouched or complete, and a rerun (``train --resume``) succeeds.

Each case forks a child of this test process (torch and lineage already imported: a fresh
interpreter per case would cost seconds of start-up each), which runs the CLI with
``LINEAGE_FAULT`` naming the point and dies there by SIGKILL: no ``finally``, no ``atexit``.
Then the registry (models, edges, evaluations, tokenizers, domains, shards, caches) must equal
the one before the job ("nothing") or hold the whole result ("whole"); files the job left that a
finished job does not have must be recognisably unfinished (a hidden temporary, a folder of a
name still reserved by the dead job, a domain version no shard points at). The rerun must
succeed and leave no temporary, reservation or RUNNING run behind.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lineage.cli import app, main
from lineage.faults import FAULT_ENV
from lineage.registry import Registry
from lineage.workspace import Workspace

runner = CliRunner()

TRAIN = ["train", "-m", "student", "-o", "out2", "-d", "cs", "--steps", "4", "--batch-size", "4"]
TRAIN += [
    "--block-size",
    "32",
    "--eval-every",
    "2",
    "--eval-blocks",
    "2",
    "--checkpoint-every",
    "2",
]
CREATE = ["model", "create", "m2", "--family", "roberta", "--tokenizer", "shared", "--layers", "2"]
CREATE += ["--hidden", "32", "--heads", "2", "--ffn", "64", "--max-positions", "40"]
GROW = ["grow", "teacher-lit", "g2", "--layers", "3", "--hidden", "32", "--max-blocks", "2"]
GROW += ["--block-size", "32"]
CACHE = ["cache", "build", "--teacher", "teacher-lit", "-d", "cs", "--block-size", "32"]
CACHE += ["--top-k", "4"]
TOKENIZER = ["tokenizer", "train", "tok2", "-d", "cs", "--vocab-size", "300"]
DOMAIN = ["domain", "add", "extra", "{src}", "--valid-every", "5", "--shard-mb", "0.02"]


@dataclass(frozen=True)
class Case:
    point: str  # the fault point the child dies at
    argv: list[str]
    left: str  # "nothing" (registry as before) or "whole" (the result registered)
    rerun: list[str] | None = None  # default: argv again

    def __str__(self) -> str:
        return self.point


CASES = [
    Case("domain.staged", DOMAIN, "nothing"),
    Case("domain.published", DOMAIN, "nothing"),
    Case("domain.registered", DOMAIN, "whole"),
    Case("tokenizer.saved", TOKENIZER, "nothing"),
    Case("create.reserved", CREATE, "nothing"),
    Case("create.saved", CREATE, "nothing"),
    Case("grow.reserved", GROW, "nothing"),
    Case("grow.written", GROW, "nothing"),
    Case("grow.saved", GROW, "nothing"),
    Case("grow.registering", GROW, "nothing"),
    Case("grow.registered", GROW, "whole"),
    Case("train.reserved", TRAIN, "nothing"),
    Case("train.saved", TRAIN, "nothing", [*TRAIN, "--resume"]),
    Case("train.registering", TRAIN, "nothing", [*TRAIN, "--resume"]),
    Case("train.registered", TRAIN, "whole"),
    Case("cache.published", CACHE, "nothing"),
]
UNFINISHED = re.compile(r"^\.(.+\.tmp-.+|.+\.partial|staging-.+|.+\.old-.+)$")
NOT_STATE = ("mlflow", "runs", ".locks")  # tracking store, checkpoints, lock files


def registry_state(root: Path) -> dict[str, Any]:
    """What the registry says the workspace holds (run records aside)."""
    ws = Workspace.open(root)
    reg = ws.registry
    try:
        return {
            "models": sorted(m.name for m in reg.models()),
            "edges": sorted((e.parent, e.child, e.kind) for e in reg.edges()),
            "evaluations": sorted((e.model, e.domain, e.step) for e in reg.evaluations()),
            "tokenizers": sorted(t.name for t in reg.tokenizers()),
            "domains": sorted(d.name for d in reg.domains()),
            "shards": sorted(Path(s.path).relative_to(root).as_posix() for s in reg.shards()),
            "caches": sorted(Path(c.path).relative_to(root).as_posix() for c in reg.caches()),
        }
    finally:
        ws.close()


def files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.endswith(".lock")
        and not p.relative_to(root).parts[0].startswith(NOT_STATE)
        and ".locks" not in p.parts
    }


def unfinished(path: str, reserved: list[str], registered_shards: list[str]) -> bool:
    """A file a killed job may leave that no finished job has, and that the next job of the
    same name (or ``db check --repair``) removes."""
    parts = path.split("/")
    if any(UNFINISHED.match(p) for p in parts):
        return True
    if any(path.startswith(r + "/") for r in reserved):
        return True
    # a domain version folder no shard row points into (corpora.domains.clean_leftovers)
    return parts[0] == "domains" and not any(
        path.startswith(s.rsplit("/", 1)[0] + "/") for s in registered_shards
    )


def reserved_folders(root: Path) -> list[str]:
    reg = Registry(Workspace.open(root).registry_url, storage_root=root)
    try:
        return [Path(r.path).relative_to(root).as_posix() for r in reg.reservations()]
    finally:
        reg.close()


def _child(point: str, argv: list[str]) -> None:
    os.environ[FAULT_ENV] = point
    try:
        app(args=argv, prog_name="lineage", standalone_mode=False)
    except BaseException:
        os._exit(1)
    os._exit(0)


def run_killed(point: str, argv: list[str]) -> int | None:
    """Run the CLI in a forked child that dies at ``point``; its exit code (-9: SIGKILL)."""
    child = multiprocessing.get_context("fork").Process(target=_child, args=(point, argv))
    child.start()
    child.join(timeout=300)
    return child.exitcode


@pytest.mark.parametrize("case", CASES, ids=str)
def test_killed_job_leaves_nothing_or_the_whole_and_a_rerun_succeeds(
    case: Case, family_ws: Workspace, tmp_path: Path
) -> None:
    root = family_ws.root
    family_ws.close()
    src = tmp_path / "extra.txt"
    shard = next((root / "domains" / "literature").rglob("train-*.txt"))
    src.write_text(shard.read_text(encoding="utf-8"), encoding="utf-8")
    argv = ["-w", str(root), *[a.format(src=src) for a in case.argv]]
    before, files_before = registry_state(root), files(root)

    assert run_killed(case.point, argv) == -signal.SIGKILL
    killed, files_killed, reserved = registry_state(root), files(root), reserved_folders(root)

    if case.left == "nothing":
        assert killed == before, f"the registry changed although {case.point} is before the commit"
        rerun = runner.invoke(app, ["-w", str(root), *(case.rerun or argv[2:])])
        assert rerun.exit_code == 0, rerun.output
    else:
        assert killed != before, "the whole result should be registered"
        rerun = runner.invoke(app, ["-w", str(root), *(case.rerun or argv[2:])])
        assert rerun.exit_code == 1 and "already registered" in rerun.output, rerun.output
    done, files_done = registry_state(root), files(root)
    assert killed in (before, done)
    left = files_killed - files_done - files_before
    shards = done["shards"]
    assert all(unfinished(p, reserved, shards) for p in left), sorted(left)
    assert not [p for p in files_done if any(UNFINISHED.match(x) for x in p.split("/"))]
    assert reserved_folders(root) == []
    ws = Workspace.open(root)
    try:
        if case.left == "nothing":  # the dead job's runs were failed by the job that took over
            assert [r.id for r in ws.registry.runs() if r.status == "running"] == []
        for model in set(done["models"]) - set(before["models"]) - {"m2"}:  # create: no card
            assert (Path(ws.registry.model(model).path) / "README.md").is_file()  # its card
    finally:
        ws.close()


def _cli_child(argv: list[str], out: Path) -> None:
    """The CLI as a user runs it: its exit code, stdout and stderr into ``out.*``."""
    with (out.with_suffix(".out")).open("w") as o, (out.with_suffix(".err")).open("w") as e:
        os.dup2(o.fileno(), 1)
        os.dup2(e.fileno(), 2)
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)  # noqa: SIM115
        sys.argv = ["lineage", *argv]
        try:
            main()
        except SystemExit as exc:
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(2)
    os._exit(0)


def test_same_output_at_once_one_wins_and_a_fresh_tracking_store_is_created_once(
    family_ws: Workspace, tmp_path: Path
) -> None:
    """Two trainings with the same -o started at once: one registers it, the other is refused
    at once with one line and the winner's files stay intact. A third, with another output,
    starts at the same moment in a workspace whose MLflow store does not exist yet: the store
    is created once (under its lock) and every training that may run succeeds."""
    from sqlalchemy.engine import make_url

    root = family_ws.root
    store = Path(str(make_url(family_ws.tracking_uri).database))
    family_ws.close()
    store.unlink()  # a fresh tracking store: the first trainings create it together
    base = ["-w", str(root), *TRAIN[:3], *TRAIN[5:]]  # TRAIN without its -o
    argvs = {"a": [*base, "-o", "same"], "b": [*base, "-o", "same"], "c": [*base, "-o", "other"]}
    fork = multiprocessing.get_context("fork")
    children = {
        k: fork.Process(target=_cli_child, args=(argv, tmp_path / k)) for k, argv in argvs.items()
    }
    for child in children.values():
        child.start()
    ended: list[str] = []  # in the order they ended
    while len(ended) < len(children):
        running = {c.sentinel: k for k, c in children.items() if k not in ended}
        ended += [running[r] for r in multiprocessing.connection.wait(list(running), timeout=300)]  # type: ignore[index]
    for child in children.values():
        child.join()
    codes = {k: c.exitcode for k, c in children.items()}
    err = {k: (tmp_path / f"{k}.err").read_text() for k in children}
    assert codes["c"] == 0, err["c"]
    assert sorted((codes["a"], codes["b"])) == [0, 1], err
    loser = "a" if codes["a"] == 1 else "b"
    winner = "b" if loser == "a" else "a"
    lines = [line for line in err[loser].splitlines() if line.strip()]
    assert len(lines) == 1 and "'same'" in lines[0], err[loser]
    assert "taken by a running" in lines[0] or "already registered" in lines[0]
    if "taken by a running" in lines[0]:
        assert ended.index(loser) < ended.index(winner)  # refused at once, not after training
    verify = runner.invoke(app, ["-w", str(root), "model", "verify", "same"])
    assert verify.exit_code == 0, verify.output  # the winner's weights as registered
    ws = Workspace.open(root)
    try:
        assert {"same", "other"} <= {m.name for m in ws.registry.models()}
        assert ws.registry.reservations() == []
        assert [r.id for r in ws.registry.runs() if r.status == "running"] == []
    finally:
        ws.close()


def test_db_check_repair_cleans_up_after_killed_jobs(family_ws: Workspace) -> None:
    """A grow killed after publishing (a RUNNING run, a reservation held by a dead process, an
    unregistered folder), a temporary and an orphan folder, a flipped weight byte:
    ``db check`` finds each, ``--repair`` fixes what it may, and the name is free again."""
    import json

    from mlflow import MlflowClient
    from sqlalchemy import text

    root = family_ws.root
    (root / "models" / ".x.tmp-0badc0de").mkdir()
    (root / "models" / "orphan").mkdir()
    (root / "models" / "orphan" / "config.json").write_text("{}")
    with family_ws.registry.engine.begin() as conn:  # as registered before 0006
        conn.execute(text("UPDATE models SET files = NULL WHERE name = 't0'"))
    weights = Path(family_ws.registry.model("student").path) / "model.safetensors"
    tracking = family_ws.tracking_uri
    family_ws.close()
    assert run_killed("grow.saved", ["-w", str(root), *GROW]) == -signal.SIGKILL
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    found = runner.invoke(app, ["-w", str(root), "db", "check", "--json"])
    assert found.exit_code == 1, found.output
    report = json.loads(found.output)
    assert len(report["stale-jobs"]) == 2  # the grow's run and its reservation of g2
    assert [f["path"] for f in report["leftovers"]] == [str(root / "models" / ".x.tmp-0badc0de")]
    orphans = {Path(f["path"]).name for f in report["orphans"]}
    assert orphans == {"orphan"}  # g2's folder is reserved (by a dead job): a stale job's
    assert [f["subject"] for f in report["model-checksums"]] == ["model student"]

    fixed = runner.invoke(app, ["-w", str(root), "db", "check", "--repair", "--json"])
    after = json.loads(fixed.output)
    assert fixed.exit_code == 1 and after["model-checksums"], fixed.output  # only reported
    assert after["stale-jobs"] == after["leftovers"] == after["orphans"] == []
    assert not (root / "models" / "g2").exists() and not (root / "models" / "orphan").exists()
    ws = Workspace.open(root)
    try:
        (run,) = [r for r in ws.registry.runs() if r.kind == "grow"]
        assert run.status == "failed" and "gone" in (run.error or "")
        assert MlflowClient(tracking).get_run(str(run.mlflow_run_id)).info.status == "FAILED"
    finally:
        ws.close()
    assert runner.invoke(app, ["-w", str(root), *GROW]).exit_code == 0  # g2 is free again

    verify = runner.invoke(app, ["-w", str(root), "model", "verify", "t0"])
    assert verify.exit_code == 1 and "--record" in verify.output
    recorded = runner.invoke(app, ["-w", str(root), "model", "verify", "--record", "t0"])
    assert recorded.exit_code == 0, recorded.output
    assert runner.invoke(app, ["-w", str(root), "model", "verify", "t0"]).exit_code == 0
