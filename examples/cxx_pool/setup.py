"""Build the C++ pool example against exitguard (C++17); exitguard is a build requirement."""

import exitguard
from setuptools import Extension, setup

setup(
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
