"""The real-checkpoint journey from the CLI, timed: any local Hugging Face causal checkpoint as a
teacher with its own tokenizer, down to a LoRA adapter and a forgetting report.

    python benchmarks/bench_real_checkpoint.py PATH            # a checkpoint folder
    python benchmarks/bench_real_checkpoint.py --build-local   # build a ~100M Llama first
    python benchmarks/bench_real_checkpoint.py --smoke         # a tiny one, for the test suite

Each step is one `lineage` command in its own process, so its wall time and peak RSS (the
process's own, from wait4) are the step's: register the checkpoint, register its tokenizer,
create a smaller student with --tokenizer-from, evaluate the teacher, a measured plan, a
teacher cache of the first --cache-blocks blocks (its estimate printed next to the time it
took), a few KI steps reading only those blocks (--no-build-caches: nothing else is built),
a LoRA adaptation to a second domain, the adapter scored through its base, and the forgetting
report. --build-local first builds a Llama-architecture checkpoint (RMSNorm, SwiGLU, RoPE,
grouped-query attention, tied embeddings; ~100M parameters with a 32k BPE tokenizer trained on
the bundled text), randomly initialised or trained for --pretrain-steps, as nothing may be
downloaded here. The last stdout line is the JSON summary (also written to --out).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOMAINS_DIR = ROOT / "domains"
SIZES = {  # hidden, layers, heads, kv heads, ffn, vocabulary
    "100m": (768, 12, 12, 4, 2048, 32_000),
    "tiny": (64, 2, 4, 2, 128, 1_000),
}


def die_with_parent() -> None:
    """``preexec_fn`` of every step's process: Linux sends it SIGTERM when this script dies, even
    by kill -9, so a killed benchmark leaves no step running on (a no-op elsewhere)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    prctl = getattr(libc, "prctl", None)
    if prctl is not None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def bundled_docs(domain: str, limit: int | None = None) -> list[str]:
    """The bundled corpus's documents (blank-line separated), the first ``limit`` of them."""
    with gzip.open(DOMAINS_DIR / domain / f"{domain}.txt.gz", "rt", encoding="utf-8") as fh:
        docs = [d.strip() for d in fh.read().split("\n\n") if d.strip()]
    return docs[:limit] if limit else docs


def build_tokenizer(vocab: int, out: Path, docs: int | None = None) -> Any:
    """A SentencePiece/Llama-style BPE (Metaspace, <unk> <s> </s>, BOS prepended) trained on
    the bundled documents (the first ``docs`` of each domain; default all)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    texts = [d for name in ("literature", "cs", "bio") for d in bundled_docs(name, docs)]
    bpe.train_from_iterator(texts, trainer=trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(out))
    return fast


def build_local(out: Path, size: str, pretrain_steps: int, block: int) -> dict[str, Any]:
    """A Llama checkpoint in ``out`` (safetensors + tokenizer): random init, then
    ``pretrain_steps`` plain LM steps on the bundled text (batch 4 x ``block``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv_heads, ffn, vocab = SIZES[size]
    tok = build_tokenizer(vocab, out, None if size == "100m" else 300)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if pretrain_steps:
        ids = [i for d in bundled_docs("literature", 400) for i in [*tok(d).input_ids, 2]]
        data = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(pretrain_steps):
            batch = data[torch.randint(len(data), (4,), generator=gen)]
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad()
    model.save_pretrained(str(out))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tok),
        "shape": {
            "hidden": hidden,
            "layers": layers,
            "heads": heads,
            "kv_heads": kv_heads,
            "ffn": ffn,
        },
        "pretrain_steps": pretrain_steps,
    }


def run_step(
    name: str, ws: Path, args: list[str], log_dir: Path, in_process: bool = False
) -> dict[str, Any]:
    """One `lineage` command in its own process: wall time, peak RSS (wait4), its JSON.
    ``in_process`` (--smoke): through Typer's CliRunner in this process, whose peak RSS so far
    is all that can be said."""
    if in_process:
        return _run_here(name, ws, args)
    out, err = log_dir / f"{name}.out", log_dir / f"{name}.err"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lineage.cli", "-w", str(ws), *args],
            stdout=o,
            stderr=e,
            env=env,
            preexec_fn=die_with_parent,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = err.read_text(errors="replace")[-3000:]
        raise SystemExit(f"step {name} failed ({code}): lineage {' '.join(args)}\n{tail}")
    text = out.read_text()
    result: Any = None
    if "--json" in args:
        result = json.loads(text)
    row = {"step": name, "wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    print(f"{name:<16} {wall:8.1f} s  {row['peak_rss_mb']:6d} MB", flush=True)
    return {**row, "result": result}


def _run_here(name: str, ws: Path, args: list[str]) -> dict[str, Any]:
    import resource

    from typer.testing import CliRunner

    from lineage.cli import app

    start = time.perf_counter()
    done = CliRunner().invoke(app, ["-w", str(ws), *args])
    wall = time.perf_counter() - start
    if done.exit_code != 0:
        raise SystemExit(f"step {name} failed: lineage {' '.join(args)}\n{done.output[-3000:]}")
    rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"{name:<16} {wall:8.1f} s  {rss:6d} MB (this process so far)", flush=True)
    result = json.loads(done.stdout) if "--json" in args else None
    return {"step": name, "wall_s": round(wall, 2), "peak_rss_mb": rss, "result": result}


def journey(path: Path, work: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    ws, logs = work / "ws", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "lineage.cli", "init", str(ws)], check=True, capture_output=True
    )
    here = a.in_process
    src = work / "text"
    src.mkdir(exist_ok=True)
    steps = []
    for domain in ("cs", "bio"):
        (src / f"{domain}.txt").write_text("\n\n".join(bundled_docs(domain, a.docs)) + "\n")
    T, S = str(a.block_size), str(a.steps)
    train_opts = ["--block-size", T, "--batch-size", str(a.batch_size), "--eval-every", "0"]
    train_opts += ["--eval-blocks", str(a.eval_blocks), "--checkpoint-every", "0", "-q"]
    plan = [
        ("domains", ["domain", "add", "cs", str(src / "cs.txt"), "--shard-mb", "100"]),
        ("domain bio", ["domain", "add", "bio", str(src / "bio.txt"), "--shard-mb", "100"]),
        ("register", ["model", "register", str(path), "--name", "teacher", "--json"]),
        ("tokenizer", ["tokenizer", "register", "teacher", "--json"]),
        (
            "student",
            [
                "model",
                "create",
                "student",
                "--family",
                "llama",
                "--tokenizer-from",
                "teacher",
                "--layers",
                str(a.student_layers),
                "--hidden",
                str(a.student_hidden),
                "--heads",
                str(a.student_heads),
                "--json",
            ],
        ),
        (
            "eval teacher",
            [
                "model",
                "eval",
                "teacher",
                "-d",
                "cs",
                "--block-size",
                T,
                "--max-blocks",
                str(a.eval_blocks),
                "--json",
            ],
        ),
        (
            "plan (measured)",
            [
                "plan",
                "create",
                "--student",
                "student",
                "-d",
                "cs",
                "--teachers",
                "teacher",
                "--steps",
                S,
                "--json",
            ],
        ),
        (
            "cache build",
            [
                "cache",
                "build",
                "--teacher",
                "teacher",
                "-d",
                "cs",
                "--block-size",
                T,
                "--max-blocks",
                str(a.cache_blocks),
                "--json",
            ],
        ),
    ]
    for name, args in plan:
        steps.append(run_step(name, ws, args, logs, here))
    planned = steps[-1]["result"]["planned"][0]
    fraction = (planned["blocks"] + 0.5) / planned["shard_blocks"]  # exactly the cached blocks
    rest = [
        (
            "KI steps",
            [
                "train",
                "-m",
                "student",
                "-o",
                "student-ki",
                "-d",
                "cs",
                "--strategy",
                "ki",
                "-t",
                "teacher",
                "--steps",
                S,
                "--data-fraction",
                f"{fraction:.6f}",
                "--no-build-caches",
                *train_opts,
                "--json",
            ],
        ),
        (
            "LoRA adapt",
            [
                "adapt",
                "student-ki",
                "-d",
                "bio",
                "--strategy",
                "sl",
                "--lora",
                "--steps",
                S,
                "-o",
                "student-ki-bio",
                *train_opts,
                "--json",
            ],
        ),
        (
            "eval adapter",
            [
                "model",
                "eval",
                "student-ki-bio",
                "-d",
                "bio",
                "--block-size",
                T,
                "--max-blocks",
                str(a.eval_blocks),
                "--json",
            ],
        ),
        (
            "forgetting",
            [
                "report",
                "forgetting",
                "student-ki-bio",
                "--no-log-artifacts",
                "--plot",
                str(work / "forgetting.png"),
                "--json",
            ],
        ),
    ]
    for name, args in rest:
        steps.append(run_step(name, ws, args, logs, here))
    return steps


def cache_job_seconds(ws: Path) -> float | None:
    """The cache build job's own time (registry run: start to end, model load included),
    without the command's process start and imports."""
    from lineage.workspace import Workspace

    w = Workspace.open(ws)
    try:
        runs = [r for r in w.registry.runs() if r.kind == "cache" and r.ended_at is not None]
        return (runs[-1].ended_at - runs[-1].started_at).total_seconds() if runs else None
    finally:
        w.close()


def summary(
    steps: list[dict[str, Any]], built: dict[str, Any] | None, job_s: float | None
) -> dict[str, Any]:
    by = {s["step"]: s for s in steps}
    cache = by["cache build"]["result"]
    plan = by["plan (measured)"]["result"]["spec"]["shards"]
    return {
        "checkpoint": built,
        "steps": [{k: v for k, v in s.items() if k != "result"} for s in steps],
        "total_s": round(sum(s["wall_s"] for s in steps), 1),
        "teacher_ppl": by["eval teacher"]["result"][0]["ppl"],
        "plan": [
            {
                "shard": s["name"],
                "teacher": s["teacher"],
                "reasons": [c["reason"] for c in s["scores"]],
            }
            for s in plan
        ],
        "cache": {
            "estimated_s": cache["estimated_seconds"],
            "estimated_bytes": sum(p["bytes"] or 0 for p in cache["planned"]),
            "blocks": [p["blocks"] for p in cache["planned"]],
            "shard_blocks": [p["shard_blocks"] for p in cache["planned"]],
            "build_step_s": by["cache build"]["wall_s"],
            "build_job_s": job_s,
            "bytes": sum(
                f.stat().st_size
                for c in cache["caches"]
                for f in Path(c["path"]).rglob("*")
                if f.is_file()
            ),
        },
        "ki_caches_built": [c for c in by["KI steps"]["result"]["caches"] if not c["existing"]],
        "student_ki_final": by["KI steps"]["result"]["final"],
        "adapter_eval": by["eval adapter"]["result"][0]["ppl"],
        "forgetting": by["LoRA adapt"]["result"][0]["forgetting"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("path", nargs="?", type=Path, help="A local HF causal checkpoint folder.")
    p.add_argument("--build-local", action="store_true", help="Build a Llama checkpoint first.")
    p.add_argument("--size", choices=sorted(SIZES), default="100m")
    p.add_argument("--pretrain-steps", type=int, default=0, help="--build-local: LM steps.")
    p.add_argument("--smoke", action="store_true", help="Tiny model, tiny steps (the test).")
    p.add_argument("--docs", type=int, default=300, help="Documents per domain slice.")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="KI and LoRA optimizer steps.")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-blocks", type=int, default=8)
    p.add_argument("--cache-blocks", type=int, default=16)
    p.add_argument("--student-layers", type=int, default=2)
    p.add_argument("--student-hidden", type=int, default=256)
    p.add_argument("--student-heads", type=int, default=4)
    p.add_argument("--workdir", type=Path, help="Keep the workspace here (default: a temp dir).")
    p.add_argument("--out", type=Path, help="Write the JSON summary here.")
    p.add_argument("--in-process", action="store_true", help="Steps through CliRunner, here.")
    p.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)  # the child that builds
    a = p.parse_args()
    if a.smoke:
        a.build_local, a.size, a.docs, a.block_size, a.steps = True, "tiny", 40, 32, 2
        a.eval_blocks, a.cache_blocks, a.student_hidden, a.student_heads = 2, 3, 32, 2
        a.student_layers, a.batch_size, a.in_process = 1, 2, True
    if a.build_only is not None:  # a child process, so the parent's RSS stays small
        built = build_local(a.build_only, a.size, a.pretrain_steps, a.block_size)
        (a.build_only.parent / "built.json").write_text(json.dumps(built))
        return
    if (a.path is None) == (not a.build_local):
        p.error("give a checkpoint PATH or --build-local (or --smoke), not both")
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        built = None
        path = a.path
        if a.build_local:
            path = work / f"llama-{a.size}"
            start = time.perf_counter()
            if a.in_process:
                built = build_local(path, a.size, a.pretrain_steps, a.block_size)
            else:
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--build-only",
                        str(path),
                        "--size",
                        a.size,
                        "--pretrain-steps",
                        str(a.pretrain_steps),
                        "--block-size",
                        str(a.block_size),
                    ],
                    check=True,
                    preexec_fn=die_with_parent,
                )
                built = json.loads((path.parent / "built.json").read_text())
            built["build_s"] = round(time.perf_counter() - start, 1)
            print(f"built {path}: {built['parameters']:,} parameters in {built['build_s']} s")
        steps = journey(path, work, a)
        result = summary(steps, built, cache_job_seconds(work / "ws"))
    result["smoke"] = a.smoke
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
