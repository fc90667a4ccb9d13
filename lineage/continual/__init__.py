"""Stage 9, continual: adapting trained models to new domains, and what they forget.

After the trainer in the flow (… → trainer → registry → adapt again): the adaptation job
(``adaptation``: self-learning, KI from routed experts, replay, self-KI, LoRA), routing a text
to the adapter or expert of its domain at inference (``adapters``), and the pure forgetting
measures over a generation × domain perplexity matrix (``forgetting``). Imports train and
everything below it, never ``report``.
"""
