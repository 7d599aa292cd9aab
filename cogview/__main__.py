"""``python -m cogview`` runs the command-line interface."""

from cogview.cli import main

raise SystemExit(main())
