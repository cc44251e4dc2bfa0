"""gateway: an API gateway that keeps third-party API keys off the client."""

from .app import build_table, create_app
from .config import load_config
from .pipeline.helper import UpstreamResponse, forward

__all__ = ["UpstreamResponse", "build_table", "create_app", "forward", "load_config"]
