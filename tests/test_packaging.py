"""The install files agree with each other; the README shows the two commands."""
import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r): r.replace(" ", "") for r in pip_section if not r.startswith(("-e", "-c"))}
    assert listed == wanted, "environment.yml's pip list must equal pyproject's dependencies + dev extra"
    assert any(r.startswith("-e") for r in pip_section), "environment.yml installs the project itself"
    assert "-c constraints.txt" in pip_section, "environment.yml installs under the constraints file"


def test_library_gives_ranges_and_the_constraints_file_the_exact_pair():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_reqs = [r for r in project["dependencies"] if _name(r) in ("torch", "torchvision")]
    assert sorted(torch_reqs) == ["torch>=2.11", "torchvision>=0.26"], "a user's own torch must satisfy the library"
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert sorted(pins) == ["torch==2.15.0", "torchvision==0.29.2"]
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text(), "make installs under the constraints file"


def test_readme_quickstart_shows_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "make test" in text and "make reports" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()
