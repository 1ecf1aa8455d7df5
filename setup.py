"""Build the optional C accelerator of the commit log (``tidemq.store._records``).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the
install still succeeds and the store runs its pure-Python loops (see docs/decisions.md).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tidemq.store._records", ["backend/tidemq/store/_records.c"],
                             extra_compile_args=["-O2"], optional=True)])
