"""mozagent: the configuration agent of a web platform instance."""

__version__ = "0.1.0"
