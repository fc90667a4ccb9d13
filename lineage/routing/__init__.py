"""Stage 5, routing: which teacher should teach each shard.

The step after corpora and domains in the flow (corpora → domains → router → plan → cache →
trainer → registry): the pure scoring policy (``scoring``: proximity, capacity, quality,
eligibility), the ``Router`` that reads shards, the registry and models (``router``),
perplexities measured on shard samples (``perplexity``), and how good the routing is
(``quality``: nearest-domain accuracy, regret). Imports models, corpora, the workspace and the
registry, nothing above.
"""
