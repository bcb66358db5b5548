"""What the browser tests share: Debian's chromium (never a downloaded browser), its flags, and the skip marks.
`BROWSER_PATH` names another chromium, as for `docs/execute_notebooks.py`; a file that cannot run is no browser."""
import os, shutil

import pytest

CHROMIUM = os.environ.get("BROWSER_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

needs_browser = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install playwright; no `playwright install` needed)"),
    pytest.mark.skipif(not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
                       reason="chromium is not installed (apt-get install -y chromium)"),
]
