"""Render: desired state into the files puppet reads (Hiera 5 data and config,
external facts). ``hiera`` is pure (bytes out); ``hieradata`` owns the
published files and the last good data, and produces snapshots."""
