"""Run a command with the ``tidemq`` package of one commit rather than the working tree.

    python benchmarks/snapshot.py [--rev HEAD] -- python benchmarks/suite.py --quick
    make bench AT=HEAD

``git archive REV backend`` goes to a temporary directory that is put first on PYTHONPATH
(so the broker and client processes the suite starts use it too), and removed afterwards.
Useful when the working tree is being edited while a benchmark runs. The suite records the
commit (environment variable TIDEMQ_BENCH_SOURCE).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile


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
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "backend"], cwd=repo,
                             check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix=f"tidemq-{commit}-") as snapshot:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(snapshot, filter="data")
        backend = os.path.join(snapshot, "backend")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [backend, *filter(None, [os.environ.get("PYTHONPATH")])])
        env["TIDEMQ_BENCH_SOURCE"] = f"tidemq package of commit {commit} (git archive)"
        print(f"tidemq package from commit {commit}: {backend}", flush=True)
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
