"""`python -m loopgolf` (and `torchrun -m loopgolf`) entry point."""
from loopgolf.cli import main

raise SystemExit(main())
