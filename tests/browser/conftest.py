"""Browser tests: pytest-playwright driving Debian's Chromium (playwright's own browser download
cannot work offline). Without Chromium every test here is skipped, with how to install it."""
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    # no sandbox (CI runs as root); no GPU; and none of the background connections that a
    # machine without network access refuses one by one
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """$LTP_CHROMIUM, else `chromium` on PATH, else Debian's /usr/bin/chromium."""
    for candidate in (os.environ.get("LTP_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def pytest_collection_modifyitems(config, items):
    if chromium_path() is not None:
        return
    skip = pytest.mark.skip(
        reason="no Chromium: install Debian's package (`apt-get install chromium`, as .ci/run does) "
        "or set LTP_CHROMIUM to a Chromium binary"
    )
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch options, pointed at the system Chromium."""
    return {**browser_type_launch_args, "executable_path": chromium_path(), "args": CHROMIUM_ARGS}
