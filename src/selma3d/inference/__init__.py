"""Test-patch inference and whole-volume block-wise prediction."""
