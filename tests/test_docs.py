"""The README documents every setting the code accepts."""

from pathlib import Path

from chromaguard.config import OPTIONS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_environment_name_and_flag_is_documented() -> None:
    for option in OPTIONS:
        for name in option.env:
            assert f"`{name}`" in README, name
        if option.flag:
            assert f"`{option.flag}" in README, option.flag


def test_quick_start_has_the_ci_test_command() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    command = "pip install -e '.[test]' && python -m pytest"
    assert command in README and command in ci
