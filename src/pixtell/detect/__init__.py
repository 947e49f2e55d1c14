"""Object detection: ``analyze``, ``convert``, ``train``, ``evaluate``, ``predict`` (see DESIGN.md)."""
