"""The docs document every setting the code accepts, and the README's quick start is CI's command."""

from pathlib import Path

from chromaguard.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_every_environment_name_and_flag_is_documented() -> None:
    for option in OPTIONS:
        for name in option.env:
            assert f"`{name}`" in CONFIGURATION, name
        if option.flag:
            assert f"`{option.flag}" in CONFIGURATION, option.flag


def test_quick_start_has_the_ci_test_command() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    command = "pip install -e '.[test]' && python -m pytest"
    assert command in README and command in ci


def test_the_readme_is_short_and_every_page_it_links_exists() -> None:
    assert len(README.encode()) <= 12 * 1024
    import re

    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: {target}"
