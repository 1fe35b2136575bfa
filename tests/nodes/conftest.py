"""Fixtures shared by the node tier's files."""
import pytest
import torch


@pytest.fixture
def server_mode(comfy_host):
    """The server runs every node, and builds every model, under inference mode: a file whose tests do the same says
    ``pytestmark = pytest.mark.usefixtures("server_mode")``."""
    with torch.inference_mode():
        yield
