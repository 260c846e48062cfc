#!/usr/bin/env bash
# Installs the moto version the EC2 tests pin (tests/moto-version.txt, the only place it is
# written). Used by .ci/run and the README's setup.
set -euo pipefail
version="$(tr -d '[:space:]' < "$(dirname "$0")/moto-version.txt")"
if python3 -c "import moto, sys; sys.exit(moto.__version__ != '$version')" 2>/dev/null; then
    echo "moto $version already installed"
else
    python3 -m pip install --quiet "moto[server]==$version"
fi
