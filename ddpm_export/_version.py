"""The package version, in a module that imports nothing (the runtime reads it without the root package's helpers)."""

__version__ = "0.1.0"
