"""Build the ticker example twice from one source: `ticker` on exitguard's C API,
and `ticker_naive` on the raw CPython API (for the naive-vs-guarded demo).
Install exitguard first: the guarded build finds exitguard.h through
exitguard.get_include()."""

import exitguard
from setuptools import Extension, setup

FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror"]

setup(
    name="exitguard-ticker-example",
    version="0.1.0",
    ext_modules=[
        Extension("ticker", ["ticker.c"], include_dirs=[exitguard.get_include()],
                  extra_compile_args=FLAGS, extra_link_args=["-pthread"]),
        Extension("ticker_naive", ["ticker.c"], define_macros=[("TICKER_NAIVE", "1")],
                  extra_compile_args=FLAGS, extra_link_args=["-pthread"]),
    ],
)
