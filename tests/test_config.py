from pathlib import Path

import pytest

from lineage.config import Config, default_config_text, load_config, parse_config
from lineage.errors import LineageError


def test_repository_lineage_toml_is_the_embedded_default() -> None:
    repo_file = Path(__file__).parents[1] / "lineage.toml"
    assert repo_file.read_text(encoding="utf-8") == default_config_text()
    assert parse_config(default_config_text()) == Config()


def test_values_are_typed_and_validated() -> None:
    cfg = parse_config('[profiles]\ntop_k = 500\nmeasure = "jaccard"\n[domains]\nshard_mb = 1\n')
    assert cfg.profiles.top_k == 500 and cfg.profiles.measure == "jaccard"
    assert cfg.domains.shard_mb == 1.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[registry\nurl=1", "not valid TOML"),
        ("[nonsense]\na = 1", "unknown section [nonsense]"),
        ("[profiles]\ntopk = 3", "unknown key profiles.topk"),
        ('[profiles]\ntop_k = "many"', "profiles.top_k must be int, got str"),
        ("[profiles]\ntop_k = true", "profiles.top_k must be int, got bool"),
        ("[profiles]\ntop_k = 0", "[profiles] top_k must be >= 1"),
        ('[profiles]\nmeasure = "cosine"', "measure must be"),
        ('[registry]\nurl = "registry.db"', "SQLAlchemy URL"),
    ],
)
def test_errors_name_the_file_and_the_key(text: str, needle: str) -> None:
    with pytest.raises(LineageError) as err:
        parse_config(text, "ws/lineage.toml")
    assert "ws/lineage.toml" in str(err.value)
    assert needle in str(err.value)


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(LineageError, match="does not exist"):
        load_config(tmp_path / "lineage.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[registry]")
    with pytest.raises(LineageError, match="not UTF-8"):
        load_config(bad)
