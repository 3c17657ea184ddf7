"""Suite-wide settings.

Hypothesis: no per-example deadline.  Its default (200 ms per example) is a
wall-clock limit, which fails on a loaded machine and passes on a fast one
whatever the code does; speed is measured in ``benchmarks/`` instead.
"""

from __future__ import annotations

try:
    from hypothesis import settings
except ImportError:  # a core install without the [testing] extra
    pass
else:
    settings.register_profile("dpverify", deadline=None)
    settings.load_profile("dpverify")
