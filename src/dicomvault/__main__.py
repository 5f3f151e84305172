"""`python -m dicomvault` runs the command line."""

from dicomvault.cli import main

main()
