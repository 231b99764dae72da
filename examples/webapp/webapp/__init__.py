"""The sample app of mozagent's reference service (examples/webapp)."""
