"""The client stands beside the server: importing it loads nothing of `lokal.server`."""

from __future__ import annotations

import subprocess
import sys

# a fresh interpreter, since this test session has imported the server already
CHECK = """
import sys
import lokal.client.chat, lokal.client.commands, lokal.client.pull
print(sorted(m for m in sys.modules if m.startswith("lokal.server")))
"""


def test_the_client_does_not_import_the_server() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["[]"]
