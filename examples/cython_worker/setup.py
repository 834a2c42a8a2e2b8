"""cyworker: Cython finds exitguard's declarations by `cimport exitguard`
(exitguard/__init__.pxd in the installed package); the C compiler needs its
include folder."""

import exitguard
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("cyworker", ["cyworker.pyx"], include_dirs=[exitguard.get_include()],
                   extra_link_args=["-pthread"])],
        compiler_directives={"language_level": 3},
    ),
)
