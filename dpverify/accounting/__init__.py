"""dpverify.accounting (see its issue)."""
