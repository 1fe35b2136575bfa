"""Blendshape-guided expression editing as plain numpy/torch: encoder, edits, adapters."""
