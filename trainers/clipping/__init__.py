"""Per-example clipping without per-example gradients (ghost clipping).

:class:`GhostClipping` computes per-example gradient norms layer by layer and
the clipped sum by book-keeping; :mod:`trainers.clipping.ghost` documents the
method, :mod:`trainers.clipping._rules` the per-layer rules.
"""

from trainers.clipping.ghost import GhostClipping as GhostClipping
from trainers.clipping.ghost import GhostPass as GhostPass
from trainers.clipping.ghost import GhostPlan as GhostPlan
from trainers.clipping.ghost import LayerPlan as LayerPlan
from trainers.clipping.ghost import UnsupportedLayer as UnsupportedLayer
