"""Raster and file I/O (torch-free)."""
