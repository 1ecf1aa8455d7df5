"""Benchmarks (DESIGN.md section 10), run by ``tidemq bench <workload>`` and ``benchmarks/``.

    store_bench.py   the storage engine alone: appends, group commit, read-back (issue: storage)
    baselines.py     what the machine itself does: os.write, the disk's sequential write, fsync
    report.py        figures, the printed table, the JSON file, the machine description

A benchmark writes only under the data directory it is given (default: a temporary
directory under the current one, removed afterwards). Later workloads (produce, consume,
latency) add a module here and a sub-action to ``tidemq.cli.bench_command``.
"""
