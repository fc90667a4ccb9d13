"""``python -m lineage.cli`` (what ``accelerate launch -m lineage.cli ...`` runs)."""

from lineage.cli import main

main()
