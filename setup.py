"""Build exitguard: the C core as the extension exitguard._core, plus the package.

Environment switches (read at build time):
  EG_DEBUG=1             -O0 -g, assertions on, EG_DEBUG defined (double release of
                         an eg_ref aborts with a message)
  EG_SANITIZE=LIST       comma list of address, undefined, thread (thread excludes
                         address): adds -fsanitize=LIST to compile and link
  EG_WERROR=1            warnings are errors (the Makefile and CI set it)
A build's flags decide its objects: switching EG_DEBUG or EG_SANITIZE (or the
compiler) on a tree that was built before rebuilds the extension (build_ext_flags).
The public headers (include/, the pybind11 and nanobind adapters among them) and
valgrind.supp are copied into the package, so that exitguard.get_include() points
at an installed exitguard.h; the pkg-config file is written from its template with
the version of include/exitguard/version.h.  The CMake package (src/exitguard/cmake)
and the Cython declarations (__init__.pxd) are package data as they are.
"""

import glob
import json
import os
import re
import shutil

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _version_h(macro, pattern):
    with open(os.path.join(HERE, "include", "exitguard", "version.h")) as f:
        return re.search(r"#define %s %s" % (macro, pattern), f.read()).group(1)


def version():
    return _version_h("EG_VERSION_STRING", r'"([^"]+)"')


def abi_version():
    return _version_h("EG_ABI_VERSION", r"(\d+)")


def compile_flags():
    cflags = ["-std=c11", "-fvisibility=hidden", "-Wall", "-Wextra"]
    lflags = ["-pthread", "-ldl"]    # dladdr: in libc since glibc 2.34, in libdl before
    macros = [("EG_BUILDING", "1")]
    if os.environ.get("EG_WERROR") == "1":
        cflags.append("-Werror")
    if os.environ.get("EG_DEBUG") == "1":
        cflags += ["-O0", "-g", "-UNDEBUG"]
        macros.append(("EG_DEBUG", "1"))
    else:
        cflags.append("-O2")
    sanitize = [s for s in os.environ.get("EG_SANITIZE", "").replace(" ", "").split(",") if s]
    if sanitize:
        unknown = set(sanitize) - {"address", "undefined", "thread"}
        if unknown:
            raise SystemExit("EG_SANITIZE: unknown sanitizer(s) %s (use address, undefined, thread)" % ", ".join(sorted(unknown)))
        if "thread" in sanitize and "address" in sanitize:
            raise SystemExit("EG_SANITIZE: thread cannot be combined with address")
        flag = "-fsanitize=" + ",".join(sanitize)
        cflags += [flag, "-fno-omit-frame-pointer", "-g"]
        lflags += [flag]
        if "thread" in sanitize:
            # ThreadSanitizer cannot see membarrier(2): use fences on both sides.
            macros.append(("EG_TSAN", "1"))
    return cflags, lflags, macros


class build_ext_flags(build_ext):
    """Rebuild an extension whenever its flags differ from the last build's.

    setuptools decides by timestamps alone: an extension whose sources are older than
    the built library is skipped, and `pip install .` builds in the tree, so
    `EG_DEBUG=1 pip install .` after a release build installed the release build
    again, silently.  The flags of each build are recorded next to its objects
    (build_temp/NAME.flags); a different record forces a full rebuild.
    """

    def _flags(self, ext):
        c = self.compiler
        return json.dumps({
            "compile": ext.extra_compile_args, "link": ext.extra_link_args,
            "macros": ext.define_macros, "undef": ext.undef_macros,
            "compiler": getattr(c, "compiler_so", None), "linker": getattr(c, "linker_so", None),
        }, sort_keys=True)

    def build_extension(self, ext):
        stamp = os.path.join(self.build_temp, ext.name + ".flags")
        flags = self._flags(ext)
        try:
            with open(stamp) as f:
                same = f.read() == flags
        except OSError:
            same = False
        force = self.force
        self.force = force or not same
        try:
            super().build_extension(ext)
        finally:
            self.force = force
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(flags)


class build_py_with_headers(build_py):
    """Also install include/ (the public headers), valgrind.supp and exitguard.pc inside the package."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "exitguard")
        for header in glob.glob(os.path.join(HERE, "include", "**", "*.h*"), recursive=True):
            rel = os.path.relpath(header, os.path.join(HERE, "include"))
            target = os.path.join(dest, "include", rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(header, target)
        supp = os.path.join(HERE, "valgrind.supp")
        if os.path.exists(supp):
            shutil.copyfile(supp, os.path.join(dest, "valgrind.supp"))
        with open(os.path.join(HERE, "src", "exitguard", "pkgconfig", "exitguard.pc.in")) as f:
            pc = f.read()
        pc = pc.replace("@EG_VERSION_STRING@", version()).replace("@EG_ABI_VERSION@", abi_version())
        if "@" in pc:
            raise SystemExit("exitguard.pc.in: unreplaced placeholder in %r" % pc)
        os.makedirs(os.path.join(dest, "pkgconfig"), exist_ok=True)
        with open(os.path.join(dest, "pkgconfig", "exitguard.pc"), "w") as f:
            f.write(pc)


cflags, lflags, macros = compile_flags()

setup(
    version=version(),
    package_dir={"": "src"},
    packages=["exitguard"],
    package_data={"exitguard": ["py.typed", "*.pyi", "*.pxd", "cmake/*.cmake"]},
    # The template is in the sdist (MANIFEST.in); the wheel gets exitguard.pc.
    exclude_package_data={"exitguard": ["pkgconfig/*.in"]},
    ext_modules=[
        Extension(
            "exitguard._core",
            # src/*.c (the core) and src/py/*.c (the Python surface).
            sources=sorted(glob.glob("src/**/*.c", recursive=True)),
            include_dirs=["include", "src"],
            define_macros=macros,
            extra_compile_args=cflags,
            extra_link_args=lflags,
            depends=sorted(glob.glob("src/**/*.h", recursive=True) + glob.glob("include/**/*.h", recursive=True)),
        )
    ],
    cmdclass={"build_ext": build_ext_flags, "build_py": build_py_with_headers},
)
