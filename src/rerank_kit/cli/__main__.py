"""`python -m rerank_kit.cli`: the same as the `rerank-kit` command."""

from rerank_kit.cli import main

main()
