"""`python -m tpmsniff`: the same entry point as the `tpmsniff` command."""

from .cli import main

raise SystemExit(main())
