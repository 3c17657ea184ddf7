"""dpverify.stats (see its issue)."""
