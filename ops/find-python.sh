#!/bin/sh
# Print the path of a Python >= 3.12 interpreter, or explain what to install and fail.
# Order: python3.13 / python3.12 on PATH (that actually run: pyenv shims may not), then
# pyenv's own versions, then plain python3.
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }

for candidate in python3.13 python3.12; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    if ok "$path"; then
        "$path" -c 'import sys; print(sys.executable)'
        exit 0
    fi
done

root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for path in $(ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -V); do
    if ok "$path"; then
        echo "$path"
        exit 0
    fi
done

if path=$(command -v python3 2>/dev/null) && ok "$path"; then
    echo "$path"
    exit 0
fi

cat >&2 <<'MSG'
Ordinaut needs Python 3.12 or newer, and none was found.
Install one of:
  - Debian/Ubuntu: apt-get install python3.12 python3.12-venv   (Ubuntu 24.04+, Debian 13+)
  - pyenv:         pyenv install 3.12
  - macOS:         brew install python@3.12
then run the command again (or set PYTHON=/path/to/python3.12).
MSG
exit 1
