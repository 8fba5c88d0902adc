"""`python -m dimat` runs an experiment (see `dimat.cli`)."""

from dimat.cli import main

main()
