"""Test support: pytest fixtures for dev servers, sandboxes and worker processes."""
