"""Run ``python -m mirror``."""

from mirror.cli import main

raise SystemExit(main())
