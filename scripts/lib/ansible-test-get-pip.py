"""Offline stand-in for ansible-test's get-pip bootstrap: runs pip from ensurepip's bundled wheel.

The official script cannot be downloaded on this machine (no route to its host); like the official one, it runs
`pip install --upgrade --force-reinstall <args>` (so `pip==24.2` is then installed from the package index).
"""

import ensurepip
import glob
import os
import sys

wheel = glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl"))[0]
sys.path.insert(0, wheel)
from pip._internal.cli.main import main  # noqa: E402

# get-pip's own flags: it installs setuptools and wheel unless told not to; plain pip has no such options
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--upgrade", "--force-reinstall", *args]))
