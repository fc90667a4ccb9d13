"""``lineage demo``: build a whole model family on the bundled domains, in one fresh workspace.

1. domains and their proximity; 2. a shared tokenizer, G1 on literature, experts on cs and bio;
3. G2 by KI (plan from the router) beside G2 by self-learning, then G3 three ways; 4. G2 grown
from G1 (AKI) and trained with KI; 5. G2 adapted to cs and bio (SL, KI, KI + replay) with the
forgetting report; 6. a summary of what each method saved or lost, plots, and the MLflow UI.
Every number printed is measured in this run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lineage.continual.adaptation import AdaptJob, adapt
from lineage.corpora.domains import (
    add_domain,
    bundled_domains,
    bundled_domains_dir,
    compute_proximity,
)
from lineage.errors import LineageError
from lineage.inherit.plans import create_plan
from lineage.lifecycle import (
    create_workspace_model,
    grow_workspace_model,
    train_workspace_tokenizer,
)
from lineage.models.shapes import ModelShape
from lineage.registry.graph import to_dot
from lineage.report import plots
from lineage.report.compare import curve, saving, steps_to_reach
from lineage.report.forgetting import forgetting_report
from lineage.report.tradeoff import compare_runs
from lineage.train.runs import job_tracker, recorded
from lineage.train.trainer import TrainConfig
from lineage.train.training import TrainJob, TrainOutcome, run_training
from lineage.workspace import Workspace

GENERAL = "literature"
# Adaptation's candidate teachers: the first generation (not the other adapted variants).
FIRST_GENERATION = ("g1", "expert-cs", "expert-bio")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and budgets of the demo (the defaults fit ~15 minutes on 2 CPU cores)."""

    vocab_size: int = 2000  # shared byte-level BPE
    block_size: int = 64  # tokens per training block
    batch_size: int = 16  # blocks per step
    valid_every: int = 20  # one document in N is held out (bigger valid sets than 199:1)
    g1: ModelShape = ModelShape(layers=2, hidden=64, heads=2, ffn=256)
    expert: ModelShape = ModelShape(layers=2, hidden=64, heads=2, ffn=256)
    g2: ModelShape = ModelShape(layers=4, hidden=128, heads=4, ffn=512)
    g3: ModelShape = ModelShape(layers=6, hidden=192, heads=6, ffn=768)
    # Causal LMs: every position is a target, so tiny models learn (and teach) within minutes;
    # tiny masked LMs stay near the unigram plateau at this budget (benchmarks/bench_ki_results).
    family: str = "gpt2"
    steps_g1: int = 800  # G1, the teacher of the next generation
    steps_expert: int = 500  # the cs and bio experts
    steps_g2: int = 600
    steps_g3: int = 300
    steps_adapt: int = 200
    lr: float = 2e-3
    eval_every: int = 25
    eval_blocks: int = 48
    replay: float = 0.3  # share of adaptation batches from the source domain
    teacher_mode: str = "cached"  # top-K caches, built once per teacher and shard
    quick: bool = False

    @classmethod
    def quick_config(cls) -> DemoConfig:
        """A few steps of everything: the test suite's end-to-end check."""
        small = ModelShape(layers=2, hidden=32, heads=2, ffn=64)
        return cls(
            vocab_size=400,
            block_size=32,
            batch_size=8,
            g1=small,
            expert=small,
            g2=ModelShape(layers=2, hidden=48, heads=3, ffn=96),  # head size 16 throughout:
            g3=ModelShape(layers=3, hidden=64, heads=4, ffn=128),  # growth keeps it fixed
            steps_g1=8,
            steps_expert=8,
            steps_g2=6,
            steps_g3=6,
            steps_adapt=4,
            eval_every=3,
            eval_blocks=4,
            quick=True,
            teacher_mode="online",  # a few steps do not pay for caching whole domains
        )


@dataclass
class DemoState:
    ws: Workspace
    cfg: DemoConfig
    console: Console
    progress: bool = True  # progress bars (never in quick runs)
    outcomes: dict[str, TrainOutcome] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def train(self, name: str, job: TrainJob) -> TrainOutcome:
        outcome = run_training(self.ws, job, progress=self.progress and not self.cfg.quick)
        self.outcomes[name] = outcome
        final = {d: round(e.ppl, 2) for d, e in outcome.result.final_eval.items()}
        self.console.print(f"  [bold]{name}[/]: {outcome.result.step} steps, valid PPL {final}")
        return outcome

    def config(self, steps: int) -> TrainConfig:
        c = self.cfg
        return TrainConfig(
            steps=steps,
            batch_size=c.batch_size,
            lr=c.lr,
            eval_every=c.eval_every,
            eval_blocks=c.eval_blocks,
            checkpoint_every=max(steps // 2, 1),
            log_every=max(steps // 20, 1),
        )

    def job(
        self, student: str, output: str, domains: tuple[str, ...], steps: int, **kw: Any
    ) -> TrainJob:
        if kw.get("strategy") == "ki":
            kw.setdefault("teacher_mode", self.cfg.teacher_mode)
        return TrainJob(
            student=student,
            output=output,
            domains=domains,
            block_size=self.cfg.block_size,
            config=self.config(steps),
            **kw,
        )


def step_domains(st: DemoState) -> None:
    """1. The bundled corpora become domains; their vocabulary proximity (paper's Table 8)."""
    for name in bundled_domains():
        _, report = add_domain(
            st.ws, name, [bundled_domains_dir() / name], valid_every=st.cfg.valid_every
        )
        st.console.print(f"  {name}: {report.documents:,} documents, {report.bytes / 1e6:.2f} MB")
    names, matrix = compute_proximity(st.ws)
    table = Table("proximity", *names, title="vocabulary overlap of the top-10k words")
    for name, row in zip(names, matrix, strict=True):
        table.add_row(name, *(f"{v:.1%}" for v in row))
    st.console.print(table)
    plots.heatmap(matrix, names, names, st.ws.plots_dir / "proximity.png", title="domain proximity")
    st.summary["proximity"] = {"domains": names, "matrix": matrix.round(4).tolist()}


def step_first_generation(st: DemoState) -> None:
    """2. Shared tokenizer; G1 on the general domain; small experts on the others."""
    c = st.cfg
    tok = train_workspace_tokenizer(st.ws, "shared", bundled_domains(), vocab_size=c.vocab_size)
    st.console.print(f"  tokenizer 'shared': {tok.vocab_size} tokens")
    for name, shape, domain, seed, steps in (
        ("g1", c.g1, GENERAL, 1, c.steps_g1),
        ("expert-cs", c.expert, "cs", 2, c.steps_expert),
        ("expert-bio", c.expert, "bio", 3, c.steps_expert),
    ):
        _create(st, f"{name}-init", shape, seed)
        st.train(name, st.job(f"{name}-init", name, (domain,), steps, study="G1 and experts"))


def _create(st: DemoState, name: str, shape: ModelShape, seed: int) -> None:
    create_workspace_model(
        st.ws,
        name,
        family=st.cfg.family,
        shape=shape,
        tokenizer="shared",
        seed=seed,
        max_positions=st.cfg.block_size + 2,
    )


def step_generations(st: DemoState) -> None:
    """3. G1 -> G2 by KI (the router's plan) beside G2 by SL; then G3 from G2-KI, G2-SL and G1."""
    c = st.cfg
    _create(st, "g2-init", c.g2, 4)
    g2 = f"G2 on {GENERAL}"  # one study: SL, KI and growth + KI side by side in MLflow
    st.train("g2-sl", st.job("g2-init", "g2-sl", (GENERAL,), c.steps_g2, study=g2))
    # The first generation offers itself: the router picks, per shard, among G1 and the experts.
    plan = create_plan(
        st.ws,
        student="g2-init",
        domains=[GENERAL],
        steps=c.steps_g2,
        teachers=["g1", "expert-cs", "expert-bio"],
    )
    teachers = sorted({s["teacher"] for s in plan.spec["shards"] if s["teacher"]})
    st.console.print(
        f"  plan {plan.name!r}: the {GENERAL} shards are taught by {', '.join(teachers) or 'nobody'}"
    )
    st.train(
        "g2-ki", st.job("g2-init", "g2-ki", (), c.steps_g2, strategy="ki", plan=plan.name, study=g2)
    )
    _create(st, "g3-init", c.g3, 5)
    for teacher in ("g2-ki", "g2-sl", "g1"):
        name = f"g3-from-{teacher}"
        st.train(
            name,
            st.job(
                "g3-init",
                name,
                (GENERAL,),
                c.steps_g3,
                strategy="ki",
                teachers=(teacher,),
                study=f"G3 on {GENERAL}",
            ),
        )


def step_growth(st: DemoState) -> None:
    """4. bert2BERT: G2 grown from G1 with AKI, then trained with KI from G1."""
    c = st.cfg
    _, report = grow_workspace_model(
        st.ws,
        "g1",
        "g2-aki",
        layers=c.g2.layers,
        hidden=c.g2.hidden,
        heads=c.g2.heads,
        ffn=c.g2.ffn,
        method="aki",
        sample_domain=GENERAL,
        block_size=c.block_size,
    )
    assert report.source_eval is not None and report.grown_eval is not None  # a domain was given
    st.summary["growth"] = {
        "source_ppl": round(report.source_eval.ppl, 2),
        "grown_ppl": round(report.grown_eval.ppl, 2),
    }
    st.console.print(
        f"  g1 {c.g1.layers}x{c.g1.hidden} -> g2-aki {c.g2.layers}x{c.g2.hidden}: valid PPL "
        f"{report.source_eval.ppl:.1f} -> {report.grown_eval.ppl:.1f} before training "
        "(AKI's units from the layer above and depth stacking are not function-preserving)"
    )
    st.train(
        "g2-aki-ki",
        st.job(
            "g2-aki",
            "g2-aki-ki",
            (GENERAL,),
            c.steps_g2,
            strategy="ki",
            teachers=("g1",),
            study=f"G2 on {GENERAL}",
        ),
    )


def step_adaptation(st: DemoState) -> None:
    """5. G2 (by KI) adapts to cs and bio: SL, KI from routed experts, KI + replay (+ self-KI)."""
    c = st.cfg
    variants: dict[str, dict[str, Any]] = {
        "sl": {"strategy": "sl"},
        "ki": {"strategy": "ki", "teachers": FIRST_GENERATION},
        "ki-replay": {"strategy": "ki", "teachers": FIRST_GENERATION, "replay": c.replay},
        "ki-replay-selfki": {
            "strategy": "ki",
            "teachers": FIRST_GENERATION,
            "replay": c.replay,
            "self_ki": True,
        },
    }
    names = []
    for label, kw in variants.items():
        output = f"g2-adapt-{label}"
        job = AdaptJob(
            model="g2-ki",
            domains=("cs", "bio"),
            output=output,
            block_size=c.block_size,
            config=st.config(c.steps_adapt),
            teacher_mode=c.teacher_mode,
            **kw,
        )
        (adapted,) = adapt(st.ws, job, progress=st.progress and not c.quick)
        st.outcomes[output] = adapted.outcome
        names.append(output)
        final = {d: round(e.ppl, 1) for d, e in adapted.outcome.result.final_eval.items()}
        st.console.print(f"  [bold]{output}[/]: valid PPL {final}; plan {adapted.plan or '-'}")
    report = forgetting_report(st.ws, names, plot=st.ws.plots_dir / "forgetting.png")
    table = Table(
        "method",
        "cs PPL",
        "bio PPL",
        f"{GENERAL} before",
        f"{GENERAL} after",
        "forgot",
        title=f"adaptation to cs + bio: target gain vs forgetting of {GENERAL}",
    )
    rows = []
    for chain in report.chains:
        ends = st.outcomes[chain.model].result.final_eval
        f = chain.forgetting.get(GENERAL)
        row = {
            "method": chain.model,
            "cs": ends["cs"].ppl,
            "bio": ends["bio"].ppl,
            "before": f.before if f else None,
            "after": f.after if f else None,
            "ratio": f.ratio if f else None,
        }
        rows.append(row)
        table.add_row(
            chain.model,
            f"{row['cs']:.1f}",
            f"{row['bio']:.1f}",
            f"{row['before']:.1f}" if f else "-",
            f"{row['after']:.1f}" if f else "-",
            f"{f.ratio - 1:+.0%}" if f else "-",
        )
    st.console.print(table)
    st.summary["adaptation"] = rows


def _reach_table(
    st: DemoState, title: str, baseline: str, runs: list[str], domain: str
) -> list[dict]:
    """Steps each run needs to reach the baseline's final valid PPL (the paper's measure)."""
    base = st.outcomes[baseline].result
    target = base.final_eval[domain].ppl
    rows = []
    for name in [baseline, *runs]:
        r = st.outcomes[name].result
        reached = steps_to_reach(r.history, domain, target)
        rows.append(
            {
                "run": name,
                "final_ppl": round(r.final_eval[domain].ppl, 2),
                "steps_to_baseline": reached,
                "saving": saving(base.step, reached),
            }
        )
    table = Table("run", f"final {domain} PPL", f"steps to {target:.1f}", "saved", title=title)
    for row in rows:
        saved = "—" if row["saving"] is None else f"{row['saving']:.0%}"
        table.add_row(
            str(row["run"]),
            f"{row['final_ppl']:.2f}",
            "not reached" if row["steps_to_baseline"] is None else str(row["steps_to_baseline"]),
            saved,
        )
    st.console.print(table)
    return rows


def write_curves(histories: dict[str, list[dict[str, float]]], folder: Path) -> None:
    """valid-ppl.png: G2 and G3 learning the general domain; forgetting-curves.png: the same
    domain's perplexity while G2 adapts to cs and bio (forgetting as it happens)."""
    learn = {
        n: curve(h, GENERAL)
        for n, h in histories.items()
        if n.startswith(("g2", "g3")) and not n.startswith("g2-adapt")
    }
    adapt = {n: curve(h, GENERAL) for n, h in histories.items() if n.startswith("g2-adapt")}
    plots.curves(
        learn,
        folder / "valid-ppl.png",
        title=f"valid PPL on {GENERAL}: G2 and G3",
        xlabel="step",
        ylabel="perplexity",
        logy=True,
    )
    if adapt:
        plots.curves(
            adapt,
            folder / "forgetting-curves.png",
            title=f"{GENERAL} PPL while adapting to cs + bio",
            xlabel="step",
            ylabel="perplexity",
            logy=True,
        )


def step_summary(st: DemoState) -> None:
    """6. What each method saved or lost; PNG plots; where to look next."""
    st.summary["ki_vs_sl"] = _reach_table(
        st, "G2: KI and growth + KI vs self-learning", "g2-sl", ["g2-ki", "g2-aki-ki"], GENERAL
    )
    st.summary["generations"] = _reach_table(
        st,
        "G3: does knowledge accumulate over generations?",
        "g3-from-g2-sl",
        ["g3-from-g2-ki", "g3-from-g1"],
        GENERAL,
    )
    histories = {n: o.result.history for n, o in st.outcomes.items()}
    write_curves(histories, st.ws.plots_dir)
    _lineage_picture(st)
    adapted = [n for n in st.outcomes if n.startswith("g2-adapt")]
    if adapted:  # the trade-off figure, logged on each adaptation run
        compare_runs(st.ws, adapted, plot=st.ws.plots_dir / "tradeoff.png")
    st.summary["timings_s"] = {k: round(v, 1) for k, v in st.timings.items()}
    (st.ws.root / "demo-summary.json").write_text(json.dumps(st.summary, indent=2, default=str))
    _log_demo_run(st)
    st.console.print(f"plots in {st.ws.plots_dir}; summary in {st.ws.root / 'demo-summary.json'}")
    st.console.print(
        f"compare the runs: [bold]lineage -w {st.ws.root} ui[/] then open the printed address; "
        f"[bold]lineage -w {st.ws.root} report compare {' '.join(adapted)}[/]"
    )


def _log_demo_run(st: DemoState) -> None:
    """The demo's figures and summary as one MLflow run of its own (study "demo")."""
    note = "The lineage demo: its figures (plots/) and summary (demo-summary.json)."
    tracker = job_tracker(
        st.ws, "demo summary", {"lineage.study": "demo", "mlflow.note.content": note}
    )
    with recorded(st.ws.registry, "demo", tracker, config=dataclasses.asdict(st.cfg)):
        tracker.log_artifact(st.ws.plots_dir, "plots")
        tracker.log_artifact(st.ws.root / "demo-summary.json")


def _lineage_picture(st: DemoState) -> None:
    """plots/lineage.png and .svg: the family laid out by Graphviz (random inits, which stand
    alone, are left out)."""
    reg = st.ws.registry
    edges = reg.edges()
    named = {n for e in edges for n in (e.parent, e.child)}
    dot = to_dot([m for m in reg.models() if m.name in named], edges)
    try:
        plots.lineage_picture(dot, st.ws.plots_dir / "lineage.png")
    except LineageError as exc:  # no Graphviz here: the rest of the demo stands
        st.console.print(f"  lineage picture skipped: {exc}")


STEPS: list[tuple[str, Callable[[DemoState], None]]] = [
    ("domains", step_domains),
    ("first generation", step_first_generation),
    ("generations", step_generations),
    ("growth", step_growth),
    ("adaptation and forgetting", step_adaptation),
    ("summary", step_summary),
]


def run_demo(
    path: Path,
    cfg: DemoConfig | None = None,
    console: Console | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the demo family in a new workspace at ``path`` (refuses an existing folder);
    ``progress`` shows training progress bars (never in quick runs)."""
    cfg = cfg or DemoConfig()
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise LineageError(f"{path} exists and is not empty: the demo needs a fresh folder")
    console = console or Console()
    ws = Workspace.init(path)
    st = DemoState(ws, cfg, console, progress)
    try:
        for i, (title, step) in enumerate(STEPS, 1):
            console.rule(f"[bold]{i}. {title}")
            started = time.perf_counter()
            step(st)
            st.timings[title] = time.perf_counter() - started
    finally:
        ws.close()
    return st.summary | {"config": dataclasses.asdict(cfg)}
