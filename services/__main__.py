"""`python -m services`: the same as the `adxflow` command."""

from services.launcher.cli import main

main()
