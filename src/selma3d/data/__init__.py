"""Dataset manifests, verified downloads and the synthetic light-sheet dataset."""
