"""Base layer: errors, atomic outputs, logging, SELMA3D structure names, label semantics."""
