"""dpverify.testing (see its issue)."""
