"""Verification checks run after a migration; each says what it measured and how."""
