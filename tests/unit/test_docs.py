"""The docs document every setting the code accepts, and the README's quick start is CI's command."""

import re
from pathlib import Path

import click

from chromaguard.cli import serve
from chromaguard.config.docs import REGENERATE, configuration_markdown
from chromaguard.config.settings import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_the_configuration_page_is_generated_from_the_options() -> None:
    assert CONFIGURATION == configuration_markdown(), f"regenerate: {REGENERATE}"


def test_every_environment_name_and_flag_is_documented() -> None:
    for option in OPTIONS:
        for name in option.env:
            assert f"`{name}`" in CONFIGURATION, name
        if option.flag:
            assert f"`{option.flag}`" in CONFIGURATION, option.flag


def test_each_option_flag_is_the_one_the_cli_declares() -> None:
    declared = {param.name: "/".join(param.opts + param.secondary_opts)
                for param in serve.params if isinstance(param, click.Option)}
    assert declared.pop("config_file") == "--config"
    assert declared == {option.name: option.flag for option in OPTIONS if option.flag}


def test_each_documented_default_is_the_default() -> None:
    computed = {"otel_endpoint"}  # no default of its own: load_settings fills it in when OpenTelemetry is on
    for option in OPTIONS:
        assert option.help and option.shown_default, option.name
        if option.name in computed:
            continue
        literal = re.match(r"`([^`]*)`", option.shown_default)
        if literal:
            assert option.parse(literal.group(1)) == option.default, option.name
        else:
            assert option.default in (None, "", ()), option.name


def test_quick_start_has_the_ci_test_command() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    command = "pip install -e '.[test]' && python -m pytest"
    assert command in README and command in ci


def test_the_readme_is_short_and_every_page_it_links_exists() -> None:
    assert len(README.encode()) <= 12 * 1024
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: {target}"
