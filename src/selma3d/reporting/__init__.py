"""Paper figures and tables."""
