"""Data augmentation: SSL views and masks."""
