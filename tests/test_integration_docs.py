"""docs/integration.md: every Python block runs as it stands (in a fresh namespace, in a temporary
folder). A block that imports transformers or lightning is skipped, with the reason, where that
package is not installed; neither is a dependency of this repository."""

import importlib.util
import pathlib
import re

import pytest

PAGE = pathlib.Path(__file__).parent.parent / "docs" / "integration.md"
BLOCKS = re.findall(r"^## (.+?)$|^```python\n(.*?)^```$", PAGE.read_text(), flags=re.M | re.S)


def blocks() -> list:
    """(section title, code) for every Python block of the page."""
    found, title = [], None
    for heading, code in BLOCKS:
        title = heading or title
        if code:
            found.append(pytest.param(code, id=re.sub(r"\W+", "-", title).strip("-").lower()))
    return found


@pytest.mark.parametrize("code", blocks())
def test_the_block_runs(code, tmp_path, monkeypatch):
    for package in ("transformers", "lightning"):
        if re.search(rf"^(from|import) {package}\b", code, flags=re.M) and not importlib.util.find_spec(package):
            pytest.skip(f"{package} is not installed (optional: pip install {package})")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(PAGE), "exec"), {"__name__": "__docs__"})


def test_every_section_has_a_block():
    assert len(blocks()) == 7
