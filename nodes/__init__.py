"""Thin ComfyUI V3 nodes: a schema and a call into models/. One module per method."""
