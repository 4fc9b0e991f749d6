"""Assembled backbones (the registry that builds them from checkpoints: :mod:`geo3d.registry`)."""
