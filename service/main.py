"""The app built from the environment: ``faust -A service.main worker`` runs it.

The one module that builds something at import, and nothing imports it: ``sluice worker`` and
the CLI call :func:`service.app.create_app` themselves. A bad setting stops the import with one
line and exit code 2, as everywhere else in sluice.
"""

from __future__ import annotations

import sys

from service.app.builtin import create_app
from service.errors import SluiceError

try:
    app = create_app()
except SluiceError as exc:
    print(f"sluice: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(exc.exit_code) from None
