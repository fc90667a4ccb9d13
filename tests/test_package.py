import subprocess
import sys

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
