"""The embedded Resonate dev server. The only part of the cookbook that touches SDK internals."""

from cookbook.devserver.app import DevServer, DevServerConfig

__all__ = ["DevServer", "DevServerConfig"]
