"""``python -m bench [--quick]``: see :mod:`bench.main`."""

from bench.main import main

raise SystemExit(main())
