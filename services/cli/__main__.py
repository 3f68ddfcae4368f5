"""`python -m services.cli` is the `facegen` command."""

import sys

from services.cli.main import main

sys.exit(main())
