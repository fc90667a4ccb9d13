"""Screenshots of the MLflow UI on a lineage workspace, taken by headless Chromium.

    python scripts/ui_screenshots.py [WORKSPACE] [--out DIR] [--port PORT]

Starts ``lineage ui`` on WORKSPACE (without one, builds a small workspace first: a tiny G1
on literature, a cs expert, then four adaptations of G1 to cs — SL, KI, KI + replay and LoRA —
evaluated every few steps), drives Debian's ``chromium`` over the DevTools protocol and writes
to DIR (default ``ui-screenshots``):

- ``runs.png``: the experiment's runs list, in MLflow's model-training view;
- ``forgetting.png``: ``forgetting_ratio/<source>`` against the step for the adaptation runs of
  the newest adaptation study, overlaid (MLflow's metric page, as "compare runs" opens it);
- ``charts.png``: the experiment's chart view of those runs (``compareRunsMode=CHART``), its
  metric search set to the forgetting metric (the runs in their strategies' colours);
- ``*.txt``: each page's visible text, for checks (tests/test_ui.py reads them).

It prints the UI's address and what each picture shows. Needs ``chromium`` (``make
system-deps``) and the dev extra's ``websocket-client``; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The UI's own settings, stored as the React app stores them (key_v1 = JSON): open in the
# model-training view, and keep the assistant panel (which opens itself on a first visit) shut.
LOCAL_STORAGE = {
    "mlflow.workflowType_v1": "machine_learning",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
    "mlflow.assistant.panelOpen_v1": False,
}
WIDTH, HEIGHT = 1600, 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout: float) -> None:
    """Until ``url`` answers 200 (the UI and Chromium both take a while to come up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.5)


@contextlib.contextmanager
def mlflow_ui(workspace: Path, port: int, timeout: float = 300) -> Iterator[str]:
    """``lineage ui`` (one worker, no job runner) on ``port``; yields its base URL."""
    from lineage.cli.ui import ui_command
    from lineage.workspace import Workspace

    ws = Workspace.open(workspace)
    cmd, env = ui_command(ws, port)
    ws.close()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(f"http://127.0.0.1:{port}/health", timeout)
            yield f"http://127.0.0.1:{port}"
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-3000:])
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


class Chromium:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, profile: Path, timeout: float = 120) -> None:
        import websocket  # websocket-client

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise SystemExit("chromium not found: `make system-deps` installs it")
        port = free_port()
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless=new",
                "--no-sandbox",  # CI runs as root
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={port}",
                f"--window-size={WIDTH},{HEIGHT}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(f"http://127.0.0.1:{port}/json/version", timeout)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True
        )
        self.next_id = 0
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        settings = "".join(
            f"localStorage.setItem({json.dumps(k)}, {json.dumps(json.dumps(v))});"
            for k, v in LOCAL_STORAGE.items()
        )
        self.call("Page.addScriptToEvaluateOnNewDocument", source=settings)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command, return its result (events in between are skipped)."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def text(self) -> str:
        return str(self.evaluate("document.body.innerText") or "")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait(self, expect: list[str], path: Path, timeout: float, lines: int = 0) -> None:
        """Until the page shows every string in ``expect`` and its charts have drawn at least
        ``lines`` curves (plotly's ``path.js-line``); else save what it shows and raise."""
        deadline = time.monotonic() + timeout
        drawn = "document.querySelectorAll('path.js-line').length"
        while (missing := [s for s in expect if s not in self.text()]) or self.evaluate(
            drawn
        ) < lines:
            if time.monotonic() > deadline:
                self.save(path)  # what it showed instead, to look at
                raise TimeoutError(f"the page never showed {missing or f'{lines} curves'} "
                                   f"(see {path})")  # fmt: skip
            time.sleep(1)

    def type_into(self, placeholder: str, text: str) -> None:
        """Type ``text`` into the input whose placeholder is ``placeholder`` (as a person would:
        the page's own handlers see the keystrokes)."""
        found = self.evaluate(
            f"(e => e ? (e.focus(), true) : false)("
            f"document.querySelector('input[placeholder={json.dumps(placeholder)}]'))"
        )
        if not found:
            raise RuntimeError(f"no input with placeholder {placeholder!r}")
        self.call("Input.insertText", text=text)

    def shot(
        self,
        url: str,
        path: Path,
        expect: list[str],
        *,
        search: tuple[str, str, list[str]] | None = None,
        lines: int = 0,
        timeout: float = 180,
    ) -> str:
        """Open ``url``, wait until the page shows every string in ``expect``; with ``search``
        (placeholder, text, then expected) type into that box and wait again; wait for
        ``lines`` curves to be drawn, then save a PNG at ``path``; returns the page's text."""
        self.call("Page.navigate", url=url)
        self.wait(expect, path, timeout)
        if search is not None:
            placeholder, text, then = search
            self.type_into(placeholder, text)
            self.wait(then, path, timeout)
        self.wait([], path, timeout, lines)
        time.sleep(1)  # the last frame of the drawing
        return self.save(path)

    def save(self, path: Path) -> str:
        """The page as a PNG at ``path`` and its text beside it; returns the text."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        text = self.text()
        path.with_suffix(".txt").write_text(text, encoding="utf-8")
        return text

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass(frozen=True)
class Study:
    """The adaptation runs the pictures compare."""

    experiment_id: str
    name: str
    runs: dict[str, str]  # run id -> run name
    metric: str  # forgetting_ratio/<source>


def newest_study(workspace: Path) -> Study:
    """The newest study whose runs log forgetting: the adaptation runs to compare."""
    from mlflow import MlflowClient

    from lineage.workspace import Workspace

    ws = Workspace.open(workspace)
    client = MlflowClient(tracking_uri=ws.tracking_uri)
    exp = client.get_experiment_by_name(ws.config.tracking.experiment)
    ws.close()
    if exp is None:
        raise SystemExit(f"{workspace}: no MLflow experiment yet")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    for run in runs:
        metric = next((k for k in run.data.metrics if k.startswith("forgetting_ratio/")), None)
        study = run.data.tags.get("lineage.study")
        if metric and study:
            members = [r for r in runs if r.data.tags.get("lineage.study") == study]
            names = {r.info.run_id: r.info.run_name for r in reversed(members)}
            return Study(exp.experiment_id, study, names, metric)
    raise SystemExit(f"{workspace}: no run logged forgetting (adapt a trained model first)")


def urls(base: str, study: Study) -> dict[str, str]:
    """The three pages: runs list, metric page of the forgetting metric, chart view."""
    exp = study.experiment_id
    q = urllib.parse.quote
    metric_page = (
        f"runs={q(json.dumps(list(study.runs)))}&metric={q(json.dumps(study.metric))}"
        f"&experiments={q(json.dumps([exp]))}&plot_metric_keys={q(json.dumps([study.metric]))}"
        "&plot_layout={}&x_axis=step&y_axis_scale=linear&line_smoothness=1&show_point=true"
        "&deselected_curves=[]&last_linear_y_axis_range=[]"
    )
    search = q(f"tags.`lineage.study` = '{study.name}'")
    return {
        "runs": f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning",
        "forgetting": f"{base}/#/metric/?{metric_page}",
        "charts": f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning"
        f"&compareRunsMode=CHART&searchFilter={search}",
    }


def build_workspace(root: Path, steps: int = 60, adapt_steps: int = 40, docs: int = 400) -> None:
    """A small workspace with four adaptation runs of one model to cs (SL, KI from a cs
    expert, KI + replay, LoRA), each evaluated eight times: ``steps`` of pre-training for G1
    (literature) and the expert, ``adapt_steps`` per adaptation, ``docs`` documents a domain."""
    import gzip

    from lineage.continual.adaptation import AdaptJob, adapt
    from lineage.corpora.domains import add_domain, bundled_domains_dir
    from lineage.corpora.profiles import iter_documents
    from lineage.lifecycle import create_workspace_model, train_workspace_tokenizer
    from lineage.models.shapes import ModelShape
    from lineage.train.lora import LoraSpec
    from lineage.train.trainer import TrainConfig
    from lineage.train.training import TrainJob, run_training
    from lineage.workspace import Workspace

    ws = Workspace.init(root)
    for name in ("literature", "cs"):
        with gzip.open(bundled_domains_dir() / name / f"{name}.txt.gz", "rt") as fh:
            texts = [d for _, d in zip(range(docs), iter_documents(fh), strict=False)]
        (root / f"{name}.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
        add_domain(ws, name, [root / f"{name}.txt"], valid_every=10, shard_mb=0.05)
    train_workspace_tokenizer(ws, "shared", ["literature", "cs"], vocab_size=500)
    shape = ModelShape(layers=2, hidden=48, heads=2, ffn=96)
    config = TrainConfig(steps=steps, batch_size=8, lr=3e-3, eval_every=0, eval_blocks=8,
                         checkpoint_every=0, log_every=max(steps // 6, 1))  # fmt: skip
    for name, domain, seed in (("g1", "literature", 0), ("expert-cs", "cs", 1)):
        create_workspace_model(ws, f"{name}-init", family="gpt2", shape=shape,
                               tokenizer="shared", seed=seed, max_positions=34)  # fmt: skip
        job = TrainJob(f"{name}-init", name, (domain,), block_size=32, config=config)
        run_training(ws, job, progress=False)
    every = max(adapt_steps // 8, 1)
    adapt_config = TrainConfig(steps=adapt_steps, batch_size=8, lr=3e-3, eval_every=every,
                               eval_blocks=8, checkpoint_every=0, log_every=every)  # fmt: skip
    variants = {
        "g1-sl": {"strategy": "sl"},
        "g1-ki": {"strategy": "ki", "teachers": ("expert-cs",)},
        "g1-ki-replay": {"strategy": "ki", "teachers": ("expert-cs",), "replay": 0.3},
        "g1-lora": {"strategy": "sl", "lora": LoraSpec(rank=4, alpha=8)},
    }
    for output, kw in variants.items():
        job = AdaptJob("g1", ("cs",), output=output, block_size=32, config=adapt_config,
                       teacher_mode="online", **kw)  # type: ignore[arg-type]  # fmt: skip
        adapt(ws, job, progress=False)
    ws.close()


def take(workspace: Path, out: Path, port: int) -> dict[str, str]:
    """All three screenshots; returns the page text of each."""
    study = newest_study(workspace)
    out.mkdir(parents=True, exist_ok=True)
    names = list(study.runs.values())
    texts = {}
    with (
        mlflow_ui(workspace, port) as base,
        tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile,
    ):
        browser = Chromium(Path(profile))
        try:
            pages = urls(base, study)
            print(f"MLflow UI: {pages['runs']}")
            texts["runs"] = browser.shot(pages["runs"], out / "runs.png", names)
            texts["forgetting"] = browser.shot(
                pages["forgetting"], out / "forgetting.png", [study.metric, *names],
                lines=len(names),
            )  # fmt: skip
            texts["charts"] = browser.shot(
                pages["charts"],
                out / "charts.png",
                names,
                search=("Search metric charts", study.metric, [study.metric]),
                lines=len(names),
            )
        finally:
            browser.close()
    print(f"study {study.name!r}: {', '.join(names)}; metric {study.metric}")
    for name in texts:
        print(f"  {out / name}.png ({(out / f'{name}.png').stat().st_size:,} bytes)")
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", nargs="?", type=Path, help="a lineage workspace")
    parser.add_argument("--out", type=Path, default=Path("ui-screenshots"), help="output folder")
    parser.add_argument("--port", type=int, default=0, help="UI port (default: a free one)")
    args = parser.parse_args(argv)
    workspace = args.workspace
    if workspace is None:
        workspace = args.out / "workspace"
        if not (workspace / "lineage.toml").is_file():
            print(f"building a small workspace in {workspace} (four adaptation runs)")
            shutil.rmtree(workspace, ignore_errors=True)
            build_workspace(workspace)
    take(workspace, args.out, args.port or free_port())


if __name__ == "__main__":
    main()
