"""Run a command with the ``tidemq`` package of one commit rather than the working tree.

    python benchmarks/snapshot.py [--rev HEAD] -- python benchmarks/suite.py --quick
    make bench AT=HEAD

``git archive REV backend`` goes to a temporary directory that is put first on PYTHONPATH
(so the broker and client processes the suite starts use it too), and removed afterwards.
The store's C accelerator is built there as ``pip install`` builds it (``setup.py
build_ext --inplace``), for commits that have one. Useful when the working tree is being
edited while a benchmark runs. The suite records the commit, and whether the accelerator
was built (environment variable TIDEMQ_BENCH_SOURCE).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile

_BUILD_FILES = ("setup.py", "pyproject.toml", "README.md")
"""What ``setup.py`` needs next to ``backend`` to build the extension in place."""


def _in_commit(repo: str, commit: str, path: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=repo,
                          check=False, capture_output=True).returncode == 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=repo, check=True,
                            capture_output=True, text=True).stdout.strip()
    paths = ["backend", *[path for path in _BUILD_FILES if _in_commit(repo, commit, path)]]
    archive = subprocess.run(["git", "archive", "--format=tar", commit, *paths], cwd=repo,
                             check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix=f"tidemq-{commit}-") as snapshot:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(snapshot, filter="data")
        backend = os.path.join(snapshot, "backend")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [backend, *filter(None, [os.environ.get("PYTHONPATH")])])
        source = f"tidemq package of commit {commit} (git archive)"
        if "setup.py" in paths:
            built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                                   cwd=snapshot, check=False, capture_output=True, text=True)
            probe = subprocess.run([sys.executable, "-c", "import tidemq.store._records"],
                                   env=env, check=False, capture_output=True)
            if built.returncode or probe.returncode:
                print(f"warning: the store accelerator did not build:\n{built.stderr}",
                      file=sys.stderr, flush=True)
                source += ", store accelerator NOT built (pure Python loops)"
            else:
                source += ", store accelerator built"
        env["TIDEMQ_BENCH_SOURCE"] = source
        print(f"tidemq package from commit {commit}: {backend}", flush=True)
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
