"""deploy/Dockerfile and .dockerignore, checked without a Docker engine.

What can go wrong without anyone noticing until a build or a pod fails: a COPY of a path that
does not exist or that .dockerignore leaves out of the context, a new package never copied into
the image, root in the final stage, a compiler shipped to production, an entrypoint that is not
the console script, a port the manifests use but the image does not declare.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from redisio.settings import METRICS_PORT

from ..support.timing import scaled

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "cargo", "rustc", "python3-dev")
VOICEGRID = Path(sys.executable).parent / "voicegrid"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): instructions with continuation lines joined."""
    logical: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` keep ``path`` (relative, '/'-separated) out of the
    build context: the last matching pattern wins, ``!`` re-includes, a pattern that matches a
    directory matches everything below it."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out)

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!").strip("/"))
        if any(compiled.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


def _ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def _copies(stage: Stage) -> list[list[str]]:
    """The source paths of each COPY from the build context (not ``--from`` another stage)."""
    out = []
    for args in stage.all("COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append(words[:-1])
    return out


def test_multi_stage_on_python_311_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.base), stage.base
    final = stages[-1]
    copied_from = [a for a in final.all("COPY") if "--from=" in a]
    assert copied_from, "the final stage must copy the built environment from an earlier stage"
    assert not _copies(final), "the final stage must not copy sources from the build context"


def test_every_copied_path_exists_and_reaches_the_context(stages: list[Stage]) -> None:
    patterns = _ignore_patterns()
    sources = [src for stage in stages for copy in _copies(stage) for src in copy]
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such path in the repository"
        assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
        if path.is_dir():
            kept = [
                p
                for p in path.rglob("*")
                if p.is_file() and not ignored(str(p.relative_to(REPO)), patterns)
            ]
            assert kept, f"COPY {source}: .dockerignore leaves no file in it"


def test_every_package_and_the_readme_are_copied(stages: list[Stage]) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*").rstrip(".") for pattern in includes}
    copied = {src.rstrip("/") for stage in stages for copy in _copies(stage) for src in copy}
    assert packages <= copied, f"packages never copied into the image: {packages - copied}"
    assert {"pyproject.toml", project["project"]["readme"]} <= copied


def test_context_excludes_what_must_not_ship() -> None:
    patterns = _ignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "worker/__pycache__/x.pyc",
        ".env",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    assert not ignored("worker/cli.py", patterns)


def test_final_stage_runs_unprivileged_without_build_tools(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: use a numeric non-root uid"
    runs = " ".join(final.all("RUN"))
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", runs), (
            f"{tool} in final stage"
        )
    assert "apt-get install" not in runs


def test_entrypoint_is_the_console_script_for_every_role(stages: list[Stage]) -> None:
    final = stages[-1]
    [entrypoint] = final.all("ENTRYPOINT")
    [cmd] = final.all("CMD")
    assert json.loads(entrypoint) == ["voicegrid"], "exec form, the console script only"
    assert json.loads(cmd) == ["worker"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "voicegrid" in scripts


def test_image_declares_the_ports_and_uid_the_manifests_use(stages: list[Stage]) -> None:
    final = stages[-1]
    exposed = {int(p.split("/")[0]) for args in final.all("EXPOSE") for p in args.split()}
    assert {8080, METRICS_PORT} <= exposed
    manifest = (REPO / "deploy/k8s/base/worker-deployment.yaml").read_text()
    uid = final.all("USER")[-1].split(":")[0]
    assert f"runAsUser: {uid}" in manifest


def test_console_script_runs_in_the_venv() -> None:
    result = subprocess.run(
        [str(VOICEGRID), "--help"], capture_output=True, text=True, timeout=scaled(60)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: voicegrid")


@pytest.mark.parametrize("role", ["worker", "gateway"])
def test_role_commands_run(role: str) -> None:
    """Both Deployments run the one image's entrypoint with their role as the argument."""
    result = subprocess.run(
        [str(VOICEGRID), role, "--help"], capture_output=True, text=True, timeout=scaled(60)
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("path", "excluded"),
    [("a/b.py", True), ("keep/x.py", False), ("keep/__pycache__/x.pyc", True), ("top.txt", True)],
)
def test_dockerignore_matcher(path: str, excluded: bool) -> None:
    assert ignored(path, ["*", "!keep", "**/__pycache__"]) is excluded
