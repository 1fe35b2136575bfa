"""Moved to the shared ``models/checkpointing.py`` (kept here so existing imports work)."""
from ..checkpointing import (BlockTraining, SAVE_OBSERVERS, STREAMS, saved_tensor_copies,  # noqa: F401
                             _aliased, _local, _pack, _storage, _unpack, _Streams)
