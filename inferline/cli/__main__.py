"""`python -m inferline.cli` is the same program as the `inferline` console script."""
from inferline.cli import main

main()
