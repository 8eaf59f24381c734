"""`python -m pulsestack_cli` is the same as `pulsestack`."""

import sys

from pulsestack_cli.main import main

sys.exit(main())
