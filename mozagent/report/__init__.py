"""Report: what the agent tells people and machines: ``status`` (status.json,
``mozagent status``), ``health`` (worker progress, heartbeat), ``sdnotify``
(systemd). Heat signals and fleet presence plug in here."""
