"""``python -m rewards score --rewards recipe.yaml --input rows.jsonl``: see ``rewards.score_cli``."""

from rewards.score_cli import main

raise SystemExit(main(prog="python -m rewards"))
