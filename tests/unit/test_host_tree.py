"""The suite writes only into temporary folders: run with COMFYUI_PATH set to a user's own ComfyUI, it leaves that
tree as it found it (models/ included). Moved to the end of the run by tests/conftest.py."""
import pytest


def test_the_suite_left_the_host_tree_unchanged(request):
    from conftest import host_tree_state

    before = request.config._editlab_host_tree
    if before is None:
        pytest.skip("no host is set up: there is no tree to compare")
    after = host_tree_state()
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), (
        f"the suite wrote into the host's tree: added {added[:20]}, removed {removed[:20]}, changed {changed[:20]}")
