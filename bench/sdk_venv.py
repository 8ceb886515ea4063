"""Create bench/.venv-sdk with the official Graph beta SDK, for the comparison benchmarks only.

    python -m bench.sdk_venv

The SDK is large (about 700 MB installed): it never goes into requirements*.txt, CI or the
deployment package; bench/.gitignore keeps the venv out of git and .funcignore excludes bench/.
"""

from __future__ import annotations

import subprocess
import sys
import venv

from bench._stack import SDK_PYTHON, SDK_VENV

# The versions the figures in bench/README.md were measured with.
PACKAGES = ["msgraph-beta-sdk==1.66.0", "azure-identity>=1.19,<2"]


def main() -> int:
    if not SDK_PYTHON.exists():
        venv.create(SDK_VENV, with_pip=True)
    subprocess.run(
        [str(SDK_PYTHON), "-m", "pip", "install", "--quiet", *PACKAGES],
        check=True,
    )
    version = "import importlib.metadata as m; print(m.version('msgraph-beta-sdk'))"
    done = subprocess.run(
        [str(SDK_PYTHON), "-c", version],
        check=True,
        capture_output=True,
        text=True,
    )
    print(f"{SDK_VENV}: msgraph-beta-sdk {done.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
