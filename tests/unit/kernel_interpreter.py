"""Running the kernel tests (test_kernels_*.py) under Triton's CPU interpreter, in a child process.

Triton picks compiler or interpreter when it is imported (``TRITON_INTERPRET``: its own library functions such as
``tl.sum`` are jitted then), and setting that variable in the suite's process would also turn every later Triton
user in it into the interpreter. So a kernel test file, imported in a process whose Triton is not interpreted,
keeps one test only, ``test_under_triton_interpreter``, which runs the same file in a child pytest with
``TRITON_INTERPRET=1`` and fails with the child's report. Run directly with the variable set
(``TRITON_INTERPRET=1 pytest tests/unit/test_kernels_sae.py``) a file runs its tests in place.

On a GPU machine, ``EDITLAB_TEST_DEVICE=cuda pytest tests/unit/test_kernels_*.py`` runs the same tests in place,
compiled, on the GPU: every tensor the tests make lands on it (``on_test_device``). CI never sets it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def interpreted() -> bool:
    """True when this process imported Triton in interpreter mode."""
    try:
        import triton.language as tl
    except Exception:
        return False
    return type(tl.zeros).__name__ == "InterpretedFunction"


TEST_DEVICE = os.environ.get("EDITLAB_TEST_DEVICE", "cpu")


class on_test_device(torch.overrides.TorchFunctionMode):
    """Tensors made by torch's factory functions are made as the test wrote them (on the CPU, from its CPU
    generators: the same numbers) and moved to ``device``."""

    FACTORIES = {torch.randn, torch.rand, torch.randint, torch.zeros, torch.ones, torch.full, torch.empty,
                 torch.tensor, torch.arange}

    def __init__(self, device: str):
        super().__init__()
        self.device = torch.device(device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in self.FACTORIES and "device" not in kwargs:
            out = out.to(self.device)
        return out


def keep_only_the_child_runner(namespace: dict, path: str, timeout: int = 300) -> None:
    """Outside the interpreter: replace the module's tests by one that runs the file in a child process. With
    ``EDITLAB_TEST_DEVICE=cuda``: the tests stay, and run on the GPU."""
    if TEST_DEVICE != "cpu":
        def on_device():
            if torch.device(TEST_DEVICE).type == "cuda" and not torch.cuda.is_available():
                pytest.skip(f"EDITLAB_TEST_DEVICE={TEST_DEVICE} but torch sees no GPU")
            with on_test_device(TEST_DEVICE):
                yield

        namespace["_on_test_device"] = pytest.fixture(autouse=True)(on_device)
        return
    if interpreted():
        return
    for name in [n for n in namespace if n.startswith("test_")]:
        del namespace[name]

    def test_under_triton_interpreter():
        pytest.importorskip("triton")
        env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        env.pop("EDITLAB_KERNELS", None)
        done = subprocess.run([sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider"], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{Path(path).name} under TRITON_INTERPRET=1 failed:\n{done.stdout[-6000:]}" \
                                     f"\n{done.stderr[-2000:]}"

    namespace["test_under_triton_interpreter"] = test_under_triton_interpreter
