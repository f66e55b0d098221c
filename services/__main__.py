"""`python -m services`: the same as the `adxflow` command."""

from services.cli import main

main()
