"""The append-only, hash-chained, crash-safe run ledger (format: docs/ledger-format.md).

Public API: :class:`LedgerWriter` (create / resume / append / flush / close),
:func:`read_ledger`, :func:`iter_records`, :func:`iter_steps`,
:func:`verify_ledger`, :func:`resolve_ledger_path`, JSON Lines interchange
(:func:`import_jsonl`, :func:`export_jsonl`), the record types and the index
codec (:func:`encode_indices`, :func:`decode_indices`, :func:`encode_many`,
:func:`decode_many`).
"""

from dpverify.ledger._files import resolve_ledger_path as resolve_ledger_path
from dpverify.ledger.codec import decode_indices as decode_indices
from dpverify.ledger.codec import decode_many as decode_many
from dpverify.ledger.codec import encode_indices as encode_indices
from dpverify.ledger.codec import encode_many as encode_many
from dpverify.ledger.jsonl import export_jsonl as export_jsonl
from dpverify.ledger.jsonl import import_jsonl as import_jsonl
from dpverify.ledger.reader import Ledger as Ledger
from dpverify.ledger.reader import iter_records as iter_records
from dpverify.ledger.reader import iter_steps as iter_steps
from dpverify.ledger.reader import read_ledger as read_ledger
from dpverify.ledger.records import RECORD_TYPES as RECORD_TYPES
from dpverify.ledger.records import RECORD_VERSION as RECORD_VERSION
from dpverify.ledger.records import Checkpoint as Checkpoint
from dpverify.ledger.records import Record as Record
from dpverify.ledger.records import Resume as Resume
from dpverify.ledger.records import RunHeader as RunHeader
from dpverify.ledger.records import Seal as Seal
from dpverify.ledger.records import Step as Step
from dpverify.ledger.verify import VerifyReport as VerifyReport
from dpverify.ledger.verify import verify_ledger as verify_ledger
from dpverify.ledger.writer import LedgerWriter as LedgerWriter
