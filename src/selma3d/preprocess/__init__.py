"""Ingest, pyramid (downsample), patchify, patch sets and intensity normalisation."""
