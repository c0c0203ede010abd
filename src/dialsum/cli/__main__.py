"""`python -m dialsum.cli`: what `accelerate launch` and the tests run."""

import sys

from dialsum.cli.main import main

sys.exit(main())
