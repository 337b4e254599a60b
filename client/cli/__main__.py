"""`python -m tunefleet.client.cli`: ftctl without its console script."""

import sys

from tunefleet.client.cli import main

sys.exit(main())
