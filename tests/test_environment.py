"""The installed environment is the locked one; a drifted package is named, not discovered
through a strange failure; `lineage doctor` and `--version` say what a bug report needs."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import lineage
from lineage.cli import app
from lineage.environment import KEY_PACKAGES, find_lock, installed_version, lock_drift, read_lock
from lineage.registry.schema import head_revision

runner = CliRunner()


def test_the_installed_environment_is_exactly_the_lock() -> None:
    lock_path = find_lock()
    assert lock_path is not None, "requirements.lock is missing from the checkout"
    lock = read_lock(lock_path)
    assert set(KEY_PACKAGES) <= set(lock), "every key package is locked"
    drift = lock_drift(lock)
    assert drift == [], "installed != requirements.lock (run `make install`):\n" + "\n".join(
        map(str, drift)
    )


def test_one_changed_lock_entry_is_named(tmp_path: Path) -> None:
    lock_path = find_lock()
    assert lock_path is not None
    text = lock_path.read_text(encoding="utf-8")
    peft = installed_version("peft")
    assert f"peft=={peft} " in text
    changed = tmp_path / "requirements.lock"
    changed.write_text(text.replace(f"peft=={peft} ", "peft==0.0.1 "), encoding="utf-8")
    (drift,) = lock_drift(read_lock(changed))
    assert (drift.package, drift.locked, drift.installed) == ("peft", "0.0.1", peft)
    assert str(drift) == f"peft: locked 0.0.1, installed {peft}"
    missing = tmp_path / "missing.lock"
    missing.write_text("no-such-package-xyz==1.0 \\\n    --hash=sha256:00\n", encoding="utf-8")
    assert [str(d) for d in lock_drift(read_lock(missing))] == [
        "no-such-package-xyz: locked 1.0, installed not installed"
    ]


def test_version_flag() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"lineage {lineage.__version__}"


def test_doctor_reports_versions_stores_and_the_lock(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert runner.invoke(app, ["init", str(ws)]).exit_code == 0
    result = runner.invoke(app, ["-w", str(ws), "doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["packages"]["torch"] == installed_version("torch")
    assert set(KEY_PACKAGES) == set(data["packages"])
    assert data["drift"] == [] and data["lock"] == str(find_lock())
    assert data["registry_url"].startswith("sqlite:///")
    assert data["schema_revision"].startswith(head_revision())
    assert data["tracking_uri"] and data["device"].startswith(("cpu", "cuda"))
    assert data["processes"] == "1 process (no multi-process launcher)"
    text = runner.invoke(app, ["-w", str(ws), "doctor"]).output
    assert "transformers" in text and "matches" in text


def test_doctor_exits_1_and_names_the_drift(tmp_path: Path) -> None:
    lock_path = find_lock()
    assert lock_path is not None
    torch_version = installed_version("torch")
    changed = tmp_path / "requirements.lock"
    changed.write_text(
        lock_path.read_text().replace(f"torch=={torch_version} ", "torch==1.0.0 "),
        encoding="utf-8",
    )
    result = runner.invoke(app, ["-w", str(tmp_path), "doctor", "--lock", str(changed)])
    assert result.exit_code == 1
    assert f"torch: locked 1.0.0, installed {torch_version}" in result.output
    assert "not a lineage workspace" in result.output  # reported, not fatal
    assert not (tmp_path / "registry.db").exists()  # doctor creates nothing
