"""Metrics as pure functions; each module names the reference tool it must equal."""
