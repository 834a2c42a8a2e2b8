"""Build bench/_egbench.c, the native side of exitguard's benchmarks.

    python bench/setup.py -q build_ext --build-lib bench/build/<version> \
        --build-temp bench/build/<version>/tmp

bench/run.py and bench/callgrind.py run this themselves.  exitguard must be installed
in the running interpreter: the include directory comes from exitguard.get_include(),
and the module uses only the public C API (it never links against exitguard).
"""
import os

import exitguard
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))

setup(
    name="exitguard-bench",
    version="0",
    py_modules=[],
    ext_modules=[
        Extension(
            "_egbench",
            [os.path.join(HERE, "_egbench.c")],
            include_dirs=[exitguard.get_include()],
            # -g: callgrind and perf name the egb_loop_* functions.
            extra_compile_args=["-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror"],
            extra_link_args=["-pthread"],
        )
    ],
)
