"""An OpenAI-compatible chat client for the pack's agents and judges (see ``client``), the owner's endpoint and key
bindings (``endpoints``) and the guarded transport every request takes (``transport``)."""
from .client import LLMConfig, LLMClient, LLMError, extract_json, image_part, redact
from .endpoints import Endpoint, OwnerConfigError, SelectionError, load_owner_endpoints, select

__all__ = ["LLMConfig", "LLMClient", "LLMError", "extract_json", "image_part", "redact", "Endpoint",
           "OwnerConfigError", "SelectionError", "load_owner_endpoints", "select"]
