"""The latentvo service: archive, pipeline orchestration, CLI and (later) the VO web app."""

__version__ = "0.1.0"


def create_app(config: dict | None = None):
    """The Flask application (see :mod:`service.app`); imported lazily so the CLI starts fast."""
    from service.app import create_app as factory

    return factory(config)
