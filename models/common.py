"""Pieces every method's files share: an atomic safetensors write with normal permissions."""
from __future__ import annotations

import os
import tempfile


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None, overwrite: bool = True) -> str:
    """Write ``tensors`` to ``path`` so that a reader sees the old file or the whole new one, never a part.

    The file gets the permissions any new file gets (0666 less the umask), not the 0600 of a temporary file.
    With ``overwrite`` off an existing ``path`` raises FileExistsError and is left as it was (the final link is
    atomic, so a file created meanwhile is not replaced either)."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".part", dir=folder)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the name exists, where os.replace would replace it
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: check, then replace
                if os.path.lexists(path):
                    raise FileExistsError(path) from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
