"""What `pip install .` gives: the services and the client, importable with the
runtime dependencies alone, and no development tool (those are the separate
distribution in tools/)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIME = ("offpath/kit", "offpath/emitter", "offpath/query", "offpath/ingest", "offpath/client")
TOOLS = ("offpath/dev", "offpath/bench", "offpath/testing", "offpath/faults")


# What `pip install .` reads: the rest of the checkout (tools/, tests/, deploy/)
# is not copied, so the build cannot pick it up by accident.
_SOURCES = ("pyproject.toml", "README.md", "services", "clients", "gen")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built the way `pip install .` builds it, from a copy
    of the sources (setuptools writes build/ next to what it builds)."""
    source = tmp_path_factory.mktemp("source")
    for name in _SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name,
                source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".stamp"),
            )
        else:
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("offpath-*.whl")
    return built


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


class TestWheel:
    def test_holds_the_runtime_packages_and_the_contract(self, wheel: Path) -> None:
        """Every runtime package, the generated offpath.v1 and the catalog data ship."""
        names = _names(wheel)
        for package in (*RUNTIME, "offpath/v1"):
            assert f"{package}/__init__.py" in names, package
        assert "offpath/query/data/skills.json" in names
        assert "offpath/emitter/py.typed" in names

    def test_holds_no_development_tool(self, wheel: Path) -> None:
        """Nothing of offpath.dev, offpath.bench or offpath.testing, and no module
        that imports moto, is in what production installs."""
        names = _names(wheel)
        assert not [n for n in names if n.startswith(TOOLS)]
        imports_moto = re.compile(rb"^\s*(?:import|from)\s+moto\b", re.MULTILINE)
        with zipfile.ZipFile(wheel) as archive:
            mentions = [
                n for n in names if n.endswith(".py") and imports_moto.search(archive.read(n))
            ]
        assert mentions == []

    def test_entry_points_are_the_services_and_the_cli(self, wheel: Path) -> None:
        """The console scripts are offpath, offpath-query and offpath-ingest only."""
        with zipfile.ZipFile(wheel) as archive:
            (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
            text = archive.read(entry_points).decode()
        scripts = {line.split("=")[0].strip() for line in text.splitlines() if "=" in line}
        assert scripts == {"offpath", "offpath-query", "offpath-ingest"}

    def test_the_client_alone_needs_grpcio_protobuf_and_click(self, wheel: Path) -> None:
        """A plain install of the wheel requires grpcio, protobuf and click only; boto3,
        structlog and the other server-side packages come with the services extra."""
        with zipfile.ZipFile(wheel) as archive:
            (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            text = archive.read(metadata).decode()
        requires = [
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("Requires-Dist:")
        ]
        plain = {
            re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r
        }
        services = {
            re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]
            for r in requires
            if 'extra == "services"' in r
        }
        assert plain == {"grpcio", "protobuf", "click"}
        assert {"boto3", "structlog", "prometheus-client", "uuid-utils"} <= services

    def test_services_and_client_import_without_the_tools(
        self, wheel: Path, tmp_path: Path
    ) -> None:
        """Installed alone (no editable checkout, no tools/ distribution), the three
        entry modules import, no offpath development package can be found, and moto
        is never imported."""
        target = tmp_path / "site"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--target",
                str(target),
                str(wheel),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        # -S: no site processing, so the checkout's editable installs are not
        # on the path; the runtime dependencies come from site-packages itself.
        probe = (
            "import sys, importlib.util\n"
            f"sys.path[:0] = [{str(target)!r}, {sysconfig.get_paths()['purelib']!r}]\n"
            "import offpath.query.main, offpath.ingest.main, offpath.client.cli\n"
            "import json\n"
            "print(json.dumps({\n"
            "    'found': [m for m in ('offpath.dev', 'offpath.bench', 'offpath.testing')\n"
            "              if importlib.util.find_spec(m) is not None],\n"
            "    'moto': 'moto' in sys.modules,\n"
            "    'query': offpath.query.main.__file__,\n"
            "}))\n"
        )
        done = subprocess.run(
            [sys.executable, "-S", "-c", probe],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["found"] == []
        assert seen["moto"] is False
        assert seen["query"].startswith(str(target))
