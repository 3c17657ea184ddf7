"""``python -m dpverify`` is the ``dpverify`` command."""

from dpverify.cli import main

raise SystemExit(main())
