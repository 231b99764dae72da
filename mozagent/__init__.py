"""mozagent: the configuration agent of a web platform instance."""

__version__ = "0.1.0"


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


_structlog_without_rich()
