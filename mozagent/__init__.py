"""mozagent: the configuration agent of a web platform instance.

Importing the package imports nothing else: ``mozagent status`` (what a person
types when something is wrong) stays light. Logging is set up by
``mozagent.logs``, which the daemon imports first.
"""

__version__ = "0.1.0"
