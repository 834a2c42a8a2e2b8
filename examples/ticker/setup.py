"""Build the ticker example twice from one source: `ticker` on exitguard's C API,
and `ticker_naive` on the raw CPython API (for the naive-vs-guarded demo).
The guarded build finds exitguard.h through exitguard.get_include(): exitguard
is a build requirement (pyproject.toml), so an isolated `pip install` works."""

import exitguard
from setuptools import Extension, setup

FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror"]

setup(
    ext_modules=[
        Extension("ticker", ["ticker.c"], include_dirs=[exitguard.get_include()],
                  extra_compile_args=FLAGS, extra_link_args=["-pthread"]),
        Extension("ticker_naive", ["ticker.c"], define_macros=[("TICKER_NAIVE", "1")],
                  extra_compile_args=FLAGS, extra_link_args=["-pthread"]),
    ],
)
