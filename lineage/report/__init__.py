"""Stage 10, report: what the flow's runs gained and forgot, as numbers and figures.

After training and adaptation (… → trainer → registry): curves compared (``compare``: steps to
reach a perplexity, compute saved), figures (``plots``), and the workspace forgetting report
that writes a heatmap and JSON and logs them to MLflow (``forgetting``). Imports continual and
everything below it.
"""
