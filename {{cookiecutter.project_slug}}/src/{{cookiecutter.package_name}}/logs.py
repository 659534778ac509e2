"""Log lines of the app's own modules, next to uvicorn's.

uvicorn configures only its own loggers. The app's get a handler of their own here, and
SQLAlchemy's stay as they are: at INFO they would print every statement.
"""

import logging


def configure_logging(level: str) -> None:
    app_logger = logging.getLogger(__package__)
    if app_logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    app_logger.addHandler(handler)
    app_logger.setLevel(level)
    app_logger.propagate = False
