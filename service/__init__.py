"""The latentvo service: archive, pipeline orchestration, CLI and (later) the VO web app."""

__version__ = "0.1.0"
