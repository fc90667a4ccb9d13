import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import lineage


def test_public_names_resolve() -> None:
    for name in lineage.__all__:
        assert getattr(lineage, name) is not None
    assert lineage.ki_loss.__module__ == "lineage.inherit.losses"


def test_import_is_light_and_cli_runs_as_a_module() -> None:
    code = "import sys, lineage; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    help_text = subprocess.run(
        [sys.executable, "-m", "lineage.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "train" in help_text and "demo" in help_text


def test_all_lists_every_export() -> None:
    assert sorted(lineage.__all__) == sorted(lineage._EXPORTS)


def test_cli_spells_the_growth_methods_like_the_library() -> None:
    from typing import get_args

    from lineage.cli.grow import METHODS
    from lineage.growth import GrowthMethod

    assert get_args(GrowthMethod) == METHODS


def test_old_module_names_are_the_moved_modules_with_a_warning() -> None:
    package = Path(lineage.__file__).parent
    for old, new in lineage._MOVED.items():
        assert not (package / f"{old.removeprefix('lineage.')}.py").exists()
        sys.modules.pop(old, None)  # imported earlier in this process: import it afresh
        with pytest.warns(DeprecationWarning, match=f"{old} has moved to {new}"):
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)
        assert module.__name__ == module.__spec__.name == new  # the module keeps its own spec
    from lineage.trainer import TrainConfig  # the old spelling of an import still works

    assert TrainConfig is importlib.import_module("lineage.train.trainer").TrainConfig


def test_packages_that_were_modules_keep_their_names() -> None:
    from lineage.growth import GrowthRecord, grow_model, truncate_depth
    from lineage.growth.expand import grow_model as expanded
    from lineage.registry import Registry
    from lineage.registry.store import Registry as stored

    assert Registry is stored and grow_model is expanded
    assert GrowthRecord.__module__ == "lineage.growth.expand"
    assert truncate_depth.__module__ == "lineage.growth.twostage"
