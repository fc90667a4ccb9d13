"""Stage 8, train: the trainer, and training jobs in a workspace.

The end of the flow (router → plan → cache → trainer → registry): the training settings and
result (``config``), the stateful loop over Accelerate and its step phases (``loop``), the
``train`` call (``trainer``), atomic checkpoints that resume exactly (``checkpoints``), MLflow
tracking (``tracking``), jobs recorded as MLflow and registry runs (``runs``), LoRA adapters
built with PEFT (``lora``), and the workspace training job that resolves shards, teachers and
schedules and registers the new model (``job``, ``assign``, ``training``). Imports growth,
inherit, routing, models, corpora, the workspace and the registry, nothing above.
"""
