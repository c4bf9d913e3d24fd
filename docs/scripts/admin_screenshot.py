"""Regenerate ``docs/img/admin-list.png``: run the admin browser test with screenshots on.

Usage: ``.venv/bin/python docs/scripts/admin_screenshot.py`` (needs ``make browser-deps``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    env = {**os.environ, "UOW_DOCS_SCREENSHOT": "1", "CI": "true"}  # CI: fail, never skip
    command = [sys.executable, "-m", "pytest", "-q", "tests/admin/browser/test_admin_browser.py"]
    result = subprocess.run(command, cwd=ROOT, env=env, timeout=300, check=False)
    if result.returncode == 0:
        print(f"wrote {ROOT / 'docs' / 'img' / 'admin-list.png'}")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
