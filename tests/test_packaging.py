"""The install files agree with each other; the README shows the two commands."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r): r.replace(" ", "") for r in pip_section if not r.startswith("-e")}
    assert listed == wanted, "environment.yml's pip list must equal pyproject's dependencies + dev extra"
    assert any(r.startswith("-e") for r in pip_section), "environment.yml installs the project itself"


def test_readme_quickstart_shows_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "make test" in text and "make reports" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()
