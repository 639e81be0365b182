"""`python -m dype ...`: the `dype` command (`dype plan`, `dype generate`, `dype invokeai`)."""

import sys

from dype.cli import main

if __name__ == "__main__":
    sys.exit(main())
