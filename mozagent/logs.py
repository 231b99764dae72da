"""Structured logs: JSON lines for the journal and log shippers, key=value on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import TextIO


def _structlog_without_rich() -> None:
    """Import structlog with ``rich`` hidden from it.

    structlog imports rich (~4.6 MiB resident) whenever it is installed, for
    its developer console renderer, which the agent never uses; the Heat extra
    installs rich (python-heatclient → cliff → cmd2). Hidden only during this
    one import: anything else that wants rich still gets it.
    """
    import sys

    if "structlog" in sys.modules:
        return
    absent = object()
    saved = sys.modules.get("rich", absent)
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    except ImportError:
        pass
    finally:
        if saved is absent:
            del sys.modules["rich"]
        else:
            sys.modules["rich"] = saved  # type: ignore[assignment]


# Before any other module of the agent imports structlog: the daemon's entry
# imports this module first.
_structlog_without_rich()

import structlog  # noqa: E402 - after rich is hidden from it

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    stream = sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    shared: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # kazoo logs through the stdlib: render its records like ours (one JSON object
    # a line off a TTY), so a log shipper never meets a plain-text line.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("kazoo").setLevel(logging.WARNING if level != "debug" else logging.INFO)


class _CommandLineFormat(logging.Formatter):
    """The CLI's own shape (``mozagent: warning: …``), one line, no traceback:
    an operator reads what happened, not kazoo's internals."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        text = " ".join(record.getMessage().split())
        return f"mozagent: {level}: ZooKeeper client: {text}"


class _Once(logging.Filter):
    """Each distinct message once: a retry loop must not fill the terminal."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def route_client_logs(stream: TextIO | None = None) -> logging.Logger:
    """The logger the operator CLI gives its kazoo client: warnings and worse
    only, formatted like the CLI's own lines, on stderr. Without it they
    reached the terminal as bare text through logging's last-resort handler."""
    logger = logging.getLogger("mozagent.cli.kazoo")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.disabled = False  # a previous command in this process turned it off at its end
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_CommandLineFormat())
    handler.addFilter(_Once())
    logger.handlers[:] = [handler]
    return logger
