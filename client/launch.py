"""Entry point of ./editlab: makes the repo importable as the package ``editlab`` without running its __init__."""
import os
import sys
import types


def main():
    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    if "editlab" not in sys.modules:
        pkg = types.ModuleType("editlab")
        pkg.__path__ = [root]
        sys.modules["editlab"] = pkg
    from editlab.client.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
