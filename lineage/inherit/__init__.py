"""Stage 6, inherit: Knowledge Inheritance itself (papers/001).

The middle of the flow (router → plan → cache → trainer): the stored plan that gives every
shard its teacher and schedule (``plans``), the inheritance rate α_t (``schedules``), the KI
loss (``losses``), the offline top-K teacher logit cache (``cache`` reads it, ``cache_build``
writes it) and the workspace's teacher caches (``teachers``). Imports routing, models, corpora,
the workspace and the registry, nothing above.
"""
