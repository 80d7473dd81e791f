"""Mesh export (mesh.py); the images and videos a trial writes are in core/media.py."""
