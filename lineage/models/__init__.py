"""Stage 4, models: Hugging Face language models built, loaded and scored.

Presets and shapes as plain data (``shapes``), models from configs and their target-position
logits (``modeling``), held-out perplexity with fixed MLM masks (``evaluation``). Every later
step of the flow (router → plan → cache → trainer) loads or scores models through here. Imports
the corpora, the workspace and the registry, nothing above.
"""
