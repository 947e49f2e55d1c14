"""pixtell: train, evaluate, explain and deploy small vision models on your own images."""

__version__ = "0.1.0"
