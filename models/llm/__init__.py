"""An OpenAI-compatible chat client for the pack's agents and judges (see ``client``)."""
from .client import LLMConfig, LLMClient, LLMError, extract_json, image_part, redact

__all__ = ["LLMConfig", "LLMClient", "LLMError", "extract_json", "image_part", "redact"]
