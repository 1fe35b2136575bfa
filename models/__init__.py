"""The methods as plain torch, usable and testable without ComfyUI (models/tiny is the one part that needs the host)."""
