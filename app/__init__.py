"""Contract management service: guarded lifecycles for AI-agent orchestration contracts."""

__version__ = "0.1.0"
