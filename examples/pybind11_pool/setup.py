"""pb11pool: pybind11's own setuptools helper, plus exitguard's include folder."""

import exitguard
from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

setup(
    ext_modules=[
        Pybind11Extension(
            "pb11pool",
            ["pb11pool.cpp"],
            include_dirs=[exitguard.get_include()],
            cxx_std=17,
            extra_compile_args=["-Wall", "-Wextra", "-Werror"],
            extra_link_args=["-pthread"],
        )
    ],
)
