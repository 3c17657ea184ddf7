"""The auditor: checks over a ledger, the audit runner and the certificate."""
