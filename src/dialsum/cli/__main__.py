"""`python -m dialsum.cli`: what the data-parallel launchers and the tests run."""

import sys

from dialsum.cli.main import main

sys.exit(main())
