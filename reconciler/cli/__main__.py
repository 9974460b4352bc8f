"""`python -m reconciler.cli`: the same as the `skyform` console script."""

from reconciler.cli import main

main()
