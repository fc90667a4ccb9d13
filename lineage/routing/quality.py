"""Router quality, measured not assumed: nearest-domain accuracy on labelled held-out shards and,
with measured perplexities, regret against the oracle teacher and against a random pick."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lineage.routing.router import Assignment, Router


@dataclass(frozen=True)
class RouterReport:
    """How well a router did on labelled held-out shards."""

    n_shards: int
    accuracy: float  # share whose nearest domain is their true domain
    confusion: dict[str, dict[str, int]]  # true domain -> predicted domain -> shards
    n_scored: int  # shards with a chosen teacher and every candidate's perplexity known
    regret: float | None  # mean ln(ppl_chosen / ppl_oracle), nats; 0 = always the best teacher
    random_regret: float | None  # the same for a uniformly random candidate (expected)
    oracle_agreement: float | None  # share of shards where the choice was the oracle's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_router(
    router: Router,
    shards: Sequence[tuple[str, Sequence[str]]],
    *,
    perplexities: Sequence[Mapping[str, float]] | None = None,
) -> tuple[RouterReport, list[Assignment]]:
    """Route labelled shards ``(true domain, documents)`` and score the decisions.

    ``perplexities[i]``: every candidate teacher's measured perplexity on shard i; with them,
    regret against the oracle (lowest-perplexity teacher per shard) and against a random pick.
    """
    assignments = [
        router.route_documents(docs, f"{label}-{i}") for i, (label, docs) in enumerate(shards)
    ]
    confusion: dict[str, dict[str, int]] = {}
    for (label, _), a in zip(shards, assignments, strict=True):
        row = confusion.setdefault(label, {})
        row[str(a.domain)] = row.get(str(a.domain), 0) + 1
    correct = sum(a.domain == label for (label, _), a in zip(shards, assignments, strict=True))
    regrets: list[float] = []
    randoms: list[float] = []
    hits = 0
    for i, a in enumerate(assignments if perplexities is not None else []):
        ppl = perplexities[i]  # type: ignore[index]
        if a.teacher is None or a.teacher not in ppl:
            continue
        best = min(math.log(p) for p in ppl.values())
        regrets.append(math.log(ppl[a.teacher]) - best)
        randoms.append(sum(math.log(p) - best for p in ppl.values()) / len(ppl))
        hits += math.log(ppl[a.teacher]) == best
    n = len(regrets)
    report = RouterReport(
        n_shards=len(shards),
        accuracy=correct / len(shards) if shards else 0.0,
        confusion=confusion,
        n_scored=n,
        regret=sum(regrets) / n if n else None,
        random_regret=sum(randoms) / n if n else None,
        oracle_agreement=hits / n if n else None,
    )
    return report, assignments
