"""The public surface of dpverify.ledger is pinned: removals must be deliberate."""

import dpverify.ledger as ledger

PUBLIC = {
    "Checkpoint", "Ledger", "LedgerWriter", "RECORD_TYPES", "RECORD_VERSION", "Record",
    "Resume", "RunHeader", "Seal", "Step", "VerifyReport", "decode_indices", "decode_many",
    "encode_indices", "encode_many", "export_jsonl", "import_jsonl", "iter_records",
    "iter_steps", "read_ledger", "resolve_ledger_path", "verify_ledger",
}  # fmt: skip


def test_public_names():
    exported = {n for n in vars(ledger) if not n.startswith("_")}
    modules = {"codec", "reader", "records", "verify", "writer", "jsonl", "outline"}
    assert PUBLIC <= exported
    assert exported - PUBLIC <= modules
