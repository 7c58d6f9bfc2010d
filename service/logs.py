"""Logging of the service's own loggers (``service.*``, ``msdn_core.*``), set up by the app itself.

``create_app`` calls :func:`configure_logging` with ``MSDN_LOG_LEVEL``, so the level holds under a plain
``uvicorn service.main:app`` (the Docker image) as under ``msdn serve``. Records go to stderr as
``time level logger message``; when the process already configured the root logger (``msdn`` CLI,
pytest), no handler is added and records reach the root's handlers as usual (they always propagate).
"""

from __future__ import annotations

import logging

#: The loggers configured: the service's and the core's.
LOGGERS = ("service", "msdn_core")
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str | int) -> None:
    """Set ``level`` on the service's loggers and give them a stderr handler when nothing else handles them.

    Idempotent: calling it again only changes the level.

    Raises:
        ValueError: an unknown level name.
    """
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else int(level)
    if not isinstance(numeric, int):
        raise ValueError(f"log_level must be one of debug, info, warning, error, critical, got {level!r}")
    root_handled = bool(logging.getLogger().handlers)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(numeric)
        ours = [h for h in logger.handlers if getattr(h, "_msdn_handler", False)]
        if not ours and not root_handled:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter(FORMAT))
            handler._msdn_handler = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
            ours = [handler]
        for handler in ours:
            handler.setLevel(numeric)
