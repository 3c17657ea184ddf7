"""The append-only, hash-chained, crash-safe run ledger (format: docs/ledger-format.md)."""

from dpverify.ledger.records import (
    RECORD_TYPES as RECORD_TYPES,
)
from dpverify.ledger.records import (
    Checkpoint as Checkpoint,
)
from dpverify.ledger.records import (
    Record as Record,
)
from dpverify.ledger.records import (
    Resume as Resume,
)
from dpverify.ledger.records import (
    RunHeader as RunHeader,
)
from dpverify.ledger.records import (
    Seal as Seal,
)
from dpverify.ledger.records import (
    Step as Step,
)
