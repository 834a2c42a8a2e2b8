"""Build the C++ pool example against an installed exitguard (C++17)."""

import exitguard
from setuptools import Extension, setup

setup(
    name="exitguard-cxxpool-example",
    version="0.1.0",
    ext_modules=[
        Extension(
            "cxxpool",
            ["pool.cpp"],
            include_dirs=[exitguard.get_include()],
            language="c++",
            extra_compile_args=["-std=c++17", "-Wall", "-Wextra", "-Werror"],
            extra_link_args=["-pthread"],
        )
    ],
)
