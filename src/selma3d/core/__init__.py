"""Base layer: errors, atomic outputs, logging, SELMA3D structure names, label semantics, text
conventions (spacing strings, TeX, CSV/TSV), file checksums and Dice overlap."""
