"""A workspace: one folder with ``lineage.toml``, the registry, and the files lineage makes.

``Workspace.open(path)`` is the Python API's front door; everything else hangs off it.
Stage 2 of the layout: it knows the configuration, the registry and the folders, nothing of
the stages above (a router over a workspace: ``lineage.routing.router.Router.from_workspace``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sqlalchemy.engine import make_url

from lineage.config import CONFIG_FILE, Config, default_config_text, load_config
from lineage.errors import LineageError
from lineage.files import check_name, path_inside
from lineage.registry.entities import Model
from lineage.registry.modelcard import CardContext, write_card
from lineage.registry.modelfiles import model_files
from lineage.registry.modelinfo import read_model_info
from lineage.registry.store import Registry

ENV_VAR = "LINEAGE_WORKSPACE"
REGISTRY_URL_VAR = "LINEAGE_REGISTRY_URL"  # replaces [registry] url (e.g. a URL with a password)
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve_root(path: str | Path | None = None) -> Path:
    """``path``, else $LINEAGE_WORKSPACE, else the current directory."""
    chosen = path if path is not None else os.environ.get(ENV_VAR) or Path.cwd()
    return Path(chosen).expanduser().resolve()


@dataclass
class Workspace:
    root: Path
    config: Config
    _registry: Registry | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path | None = None) -> Workspace:
        """Open an existing workspace (``path``, $LINEAGE_WORKSPACE or the current folder)."""
        root = resolve_root(path)
        if not (root / CONFIG_FILE).is_file():
            raise LineageError(
                f"{root} is not a lineage workspace (no {CONFIG_FILE}); run `lineage init {root}`"
            )
        return cls(root, load_config(root / CONFIG_FILE))

    @classmethod
    def init(cls, path: str | Path | None = None, *, registry_url: str | None = None) -> Workspace:
        """Create a workspace: configuration, folders and an upgraded registry database.

        Nothing is left behind when it fails: the folders and files it made are removed.
        """
        root = resolve_root(path)
        if (root / CONFIG_FILE).exists():
            raise LineageError(f"{root} is already a lineage workspace")
        if root.exists() and not root.is_dir():
            raise LineageError(f"{root} exists and is not a folder")
        text = default_config_text()
        if registry_url is not None:
            text = text.replace(
                'url = "sqlite:///{workspace}/registry.db"', f'url = "{registry_url}"'
            )
        made, ws = _Made(), None
        try:
            made.folder(root)
            tmp = made.file(root / f".{CONFIG_FILE}.tmp")
            tmp.write_text(text, encoding="utf-8")
            ws = cls(root, load_config(tmp))
            for folder in ws.folders():
                made.folder(folder)
            url = make_url(ws.registry_url)
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                made.file(Path(url.database))
            _ = ws.registry  # create and upgrade the database before the workspace is declared
            os.replace(tmp, root / CONFIG_FILE)
        except BaseException:
            if ws is not None:
                ws.close()
            made.undo()
            raise
        return ws

    def folders(self) -> list[Path]:
        paths = self.config.paths
        return [
            self.path(p)
            for p in (
                paths.models,
                paths.adapters,
                paths.caches,
                paths.domains,
                paths.data,
                paths.plots,
            )
        ]

    def path(self, relative: str) -> Path:
        """A configured folder: relative to the storage root."""
        return (self.storage_root / relative).resolve()

    def child_path(self, folder: Path, *names: str) -> Path:
        """``folder/names...`` (a workspace folder and names from the registry or the user),
        checked to lie inside ``folder``: a name can never make a path outside the workspace."""
        return path_inside(folder, *names)

    def expand(self, template: str) -> str:
        """``{workspace}`` and ``${VAR}`` (from the environment) filled in."""

        def variable(match: re.Match[str]) -> str:
            if (value := os.environ.get(match[1])) is None:
                raise LineageError(
                    f"{CONFIG_FILE} refers to ${{{match[1]}}}, which is not set in the environment"
                )
            return value

        return ENV_REFERENCE.sub(variable, template.replace("{workspace}", str(self.root)))

    @property
    def registry_url(self) -> str:
        """$LINEAGE_REGISTRY_URL, else ``[registry] url`` expanded."""
        return os.environ.get(REGISTRY_URL_VAR) or self.expand(self.config.registry.url)

    @property
    def tracking_uri(self) -> str:
        return self.expand(self.config.tracking.uri)

    @cached_property
    def storage_root(self) -> Path:
        """Where models, adapters, caches and data live (``[storage] root``)."""
        return (self.root / Path(self.expand(self.config.storage.root)).expanduser()).resolve()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.registry_url, storage_root=self.storage_root)
        return self._registry

    @cached_property
    def models_dir(self) -> Path:
        return self.path(self.config.paths.models)

    @cached_property
    def adapters_dir(self) -> Path:
        return self.path(self.config.paths.adapters)

    @cached_property
    def caches_dir(self) -> Path:
        return self.path(self.config.paths.caches)

    @cached_property
    def domains_dir(self) -> Path:
        return self.path(self.config.paths.domains)

    @cached_property
    def data_dir(self) -> Path:
        return self.path(self.config.paths.data)

    @cached_property
    def plots_dir(self) -> Path:
        return self.path(self.config.paths.plots)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- models ------------------------------------------------------------------------

    def register_model(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        domains: Sequence[str] = (),
        description: str = "",
        hub_id: str | None = None,
    ) -> Model:
        """Register a local Hugging Face model directory (config read, no weights loaded);
        ``hub_id`` is its id on the Hugging Face Hub, when it comes from there."""
        model_dir = Path(path).expanduser().resolve()
        name = check_name(model_dir.name if name is None else name, "model")
        info = read_model_info(model_dir)
        for domain in domains:
            self.registry.domain(domain)  # unknown domains are refused before anything is written
        return self.registry.add_model(
            name,
            str(model_dir),
            info,
            domains=domains,
            description=description,
            hub_id=hub_id,
            files=model_files(model_dir),
        )

    def write_model_card(self, name: str) -> Path:
        """(Re)write the model directory's README.md card with its lineage: Hub ids of its
        parents and domains where recorded, the licence of ``[cards]``."""
        reg = self.registry
        model = reg.model(name)
        parents = [e for e in reg.edges(name) if e.child == name]
        hub_ids = {e.parent: reg.model(e.parent).hub_id for e in parents}
        cards = {d.name: d.card for d in reg.domains()}
        datasets = [cards.get(d, {}).get("hub_id") for d in model.domains]
        ctx = CardContext(
            generation=reg.generation(name),
            license=self.config.cards.license,
            parent_hub_ids={k: v for k, v in hub_ids.items() if v},
            datasets=[d for d in datasets if isinstance(d, str) and d],
        )
        return write_card(model, parents, ctx)


class _Made:
    """What ``Workspace.init`` created, so that a failure can remove exactly that."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def folder(self, path: Path) -> Path:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        self.paths += reversed(missing)  # outermost first
        return path

    def file(self, path: Path) -> Path:
        if not path.exists():
            self.paths.append(path)
        return path

    def undo(self) -> None:
        for path in reversed(self.paths):  # innermost first
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
