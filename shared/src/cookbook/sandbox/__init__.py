"""Provider sandbox: simulated third-party APIs whose SQLite records prove exactly-once effects."""

from cookbook.sandbox.app import PROVIDERS, create_app
from cookbook.sandbox.store import EffectRecord, RequestRecord, SandboxRecords

__all__ = ["PROVIDERS", "EffectRecord", "RequestRecord", "SandboxRecords", "create_app"]
