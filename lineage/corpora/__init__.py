"""Stage 3, corpora: text in, words and token blocks out.

The start of the flow (corpora → domains → router → plan → cache → trainer → registry): domains
and their shards (``domains``), vocabulary profiles and proximity (``profiles``), the byte-level
BPE tokenizer (``tokenizer``), token blocks per shard and tokenizer (``blocks``), and the batches,
masking and mixture sampler a training step consumes (``batches``). Imports the registry and
the workspace, nothing above.
"""
