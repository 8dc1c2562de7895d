"""Build the example contracts, or check that the committed builds are what the sources make.

    python examples/contracts/build.py           rebuild every .wasm next to its source
    python examples/contracts/build.py --check   rebuild into a temporary folder and compare byte
                                                 for byte with the committed files (exit 1 on a
                                                 difference)

WebAssembly text (``*.wat``) is assembled by ``wasmtime.wat2wasm`` (the venv's wasmtime); the
AssemblyScript contract (``notary/``) is compiled by the pinned ``asc`` after ``npm ci``, with the
flags of its ``package.json`` ``build`` script (only the output file changes). Both are
deterministic: the same sources and tool versions give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import wasmtime

HERE = Path(__file__).resolve().parent
WAT_CONTRACTS = ("counter", "token", "ai_oracle")
NOTARY = HERE / "notary"
NOTARY_OUTPUT = Path("notary.wasm")


def build_wat(name: str, out_dir: Path) -> Path:
    """Assemble ``<name>.wat`` into ``out_dir/<name>.wasm``."""
    target = out_dir / f"{name}.wasm"
    target.write_bytes(bytes(wasmtime.wat2wasm((HERE / f"{name}.wat").read_text())))
    return target


def asc_command(output: Path) -> list[str]:
    """The ``build`` script of notary/package.json, writing to ``output`` instead."""
    script = json.loads((NOTARY / "package.json").read_text())["scripts"]["build"]
    words = shlex.split(script)
    if words[0] != "asc" or "--outFile" not in words:
        raise SystemExit("notary/package.json: the build script must be `asc ... --outFile FILE`")
    words[words.index("--outFile") + 1] = str(output)
    return ["npx", "--no-install", *words]


def build_notary(out_dir: Path) -> Path:
    """Install the pinned toolchain (``npm ci``) and compile the notary into ``out_dir``."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed to build the AssemblyScript contract (apt-get install npm)")
    install = [npm, "ci", "--no-audit", "--no-fund"]
    subprocess.run(install, cwd=NOTARY, check=True)  # noqa: S603 (our command, no shell)
    target = out_dir / "notary" / NOTARY_OUTPUT
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(asc_command(target), cwd=NOTARY, check=True)  # noqa: S603 (no shell)
    return target


def build_all(out_dir: Path) -> dict[Path, Path]:
    """Build every contract under ``out_dir``; map each committed path to its new build."""
    built = {HERE / f"{name}.wasm": build_wat(name, out_dir) for name in WAT_CONTRACTS}
    built[NOTARY / NOTARY_OUTPUT] = build_notary(out_dir)
    return built


def main(argv: list[str] | None = None) -> int:
    """Rebuild in place, or with ``--check`` compare fresh builds with the committed files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of overwriting")
    args = parser.parse_args(argv)
    if not args.check:
        for name in WAT_CONTRACTS:
            print(f"built {build_wat(name, HERE).relative_to(HERE)}")
        print(f"built {build_notary(HERE).relative_to(HERE)}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        differ = [
            committed.relative_to(HERE)
            for committed, fresh in build_all(Path(scratch)).items()
            if not committed.is_file() or committed.read_bytes() != fresh.read_bytes()
        ]
    if differ:
        names = ", ".join(str(path) for path in differ)
        print(
            f"the committed builds differ from their sources: {names} (run `make contracts`)",
            file=sys.stderr,
        )
        return 1
    print("the committed contract builds match their sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
