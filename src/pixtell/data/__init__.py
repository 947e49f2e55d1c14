"""Shared data machinery: safe image loading, folder scans and splits, transforms, demo data."""
