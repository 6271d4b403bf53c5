"""``python -m refgen`` runs the command line (see refgen.cli)."""
import sys

from refgen.cli import main

sys.exit(main())
