# Sourced by scripts/test and scripts/demo: make .venv with cgoom and its development
# dependencies, reinstalling only when pyproject.toml changed. Needs Python 3.11+.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "cgoom needs Python 3.11 or newer; '$PYTHON' is $("$PYTHON" --version 2>&1 || echo missing)." >&2
    echo "Set PYTHON=/path/to/python3.11 and run again." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        # Debian's python3 ships venv separately.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            rm -rf .venv
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
            "$PYTHON" -m venv .venv
        else
            echo "cannot create a virtualenv: install python3-venv (apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
fi
stamp=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat .venv/.cgoom-installed 2>/dev/null || true)" != "$stamp" ]; then
    echo "scripts: installing cgoom and its development dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' >&2
    echo "$stamp" > .venv/.cgoom-installed
fi
export PATH="$PWD/.venv/bin:$PATH"
