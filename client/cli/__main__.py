"""`python -m tunefleet.client.cli`: ftctl without its console script."""

from tunefleet.client.cli import console_main

console_main()
