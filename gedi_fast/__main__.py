"""`python -m gedi_fast` is the `gedi-fast` command."""
import sys

from gedi_fast.command import main

sys.exit(main())
