"""Desired state, pure: what a key, a value, a layer, a snapshot and a Heat
deployment may be, and how raw reads become the data to render. No I/O here,
so every rule (the bad-input rules above all) is tested without a server."""
