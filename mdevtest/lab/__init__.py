"""The embedded local lab."""
