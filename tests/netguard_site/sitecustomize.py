"""Put on PYTHONPATH of the test suite's ComfyUI server only (tests/conftest.py does): the same loopback-only
connection guard as the in-process tiers, reported to EDITLAB_NETGUARD_LOG, which the suite checks."""
import importlib.util
import os

if os.environ.get("EDITLAB_NETGUARD_LOG"):
    _spec = importlib.util.spec_from_file_location(
        "editlab_test_netguard", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "netguard.py"))
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    _mod.install()
