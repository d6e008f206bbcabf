"""``python -m parley_client``: the terminal chat (see parley_client/cli.py)."""

import sys

from parley_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
