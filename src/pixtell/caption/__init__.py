"""Image captioning: ``train``, ``evaluate``, ``predict`` (see DESIGN.md)."""
