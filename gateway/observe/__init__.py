"""Operations: the access log, JSON logging, Prometheus metrics and the ``observe`` edge step."""

from __future__ import annotations

from .access import AccessLog
from .logs import setup_logging
from .metrics import Metrics, enable_multiprocess, forget_process, metrics_handler
from .step import Observer, observe, stream_opened

__all__ = ["AccessLog", "Metrics", "Observer", "enable_multiprocess", "forget_process", "metrics_handler", "observe",
           "setup_logging", "stream_opened"]
