"""``python -m pipeline ...``: the ``pipeline`` command where its script is not on PATH (e.g. in a Ray job)."""

from .cli import main

main(prog_name="pipeline")
