"""Crash-injection harness: kill workers and the dev server at every checkpoint, prove recovery."""
