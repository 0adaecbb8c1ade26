"""Run the calling script inside scripts/.venv, creating it on first use.

``ensure()`` creates scripts/.venv with the running interpreter, installs
scripts/requirements.txt (pinned) whenever that file changed since the last
install, and re-executes the script with the venv's python. Set
``DENSENETC_SCRIPTS_NO_VENV=1`` to use the current environment as is.
Run as a program, it only sets the venv up.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
REQUIREMENTS = HERE / "requirements.txt"
STAMP = VENV / "requirements.sha256"
PYTHON = VENV / "bin" / "python"


def _say(msg: str) -> None:
    print(f"[scripts/.venv] {msg}", file=sys.stderr, flush=True)


def setup() -> None:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    if not PYTHON.exists():
        if sys.version_info < (3, 11):
            sys.exit(f"error: Python >= 3.11 needed to create {VENV} (this is {sys.version.split()[0]})")
        _say(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    _say(f"installing {REQUIREMENTS.name} (pinned; ~400 MB, once)")
    r = subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", str(REQUIREMENTS)])
    if r.returncode != 0:
        sys.exit(f"error: pip install -r {REQUIREMENTS} failed (status {r.returncode}); "
                 "is PyPI reachable? Delete scripts/.venv to start over.")
    STAMP.write_text(digest + "\n")


def ensure() -> None:
    if os.environ.get("DENSENETC_SCRIPTS_NO_VENV"):
        return
    setup()
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(PYTHON), [str(PYTHON), sys.argv[0], *sys.argv[1:]])


if __name__ == "__main__":
    setup()
    print(PYTHON)
