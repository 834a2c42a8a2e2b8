"""Build the examples the way a user's pip does: an isolated build, exitguard a build requirement.

Each example under examples/ declares its build requirements in its pyproject.toml,
exitguard among them.  ``build_examples`` copies each example to a scratch folder (the
checkout stays clean) and runs ``pip install --no-deps --target DIR`` with pip's default
build isolation: pip creates a fresh build environment, installs every build requirement
there -- exitguard from a local wheel of this checkout (``--find-links`` plus a constraint
pinning its version, so that no other exitguard can be picked), the rest from the package
index -- and runs the example's build backend (setuptools, scikit-build-core, meson-python)
in it.  The tests then import the built extension from DIR in a fresh interpreter.

The exitguard wheel is the one ``make install`` built and installed (kept in
``<venv>/wheelhouse``) when it is exactly the installed build; otherwise one is built
from the checkout, once per session.  ``EXITGUARD_TEST_WHEELHOUSE=DIR`` names the folder
instead (`make check-packaging`: the wheel ``python -m build`` made).  Builds run two at a time (CI has two cores).
"""

import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "examples")
BUILD_TIMEOUT = 900


class BuildResult:
    def __init__(self, name, target, log_path, returncode):
        self.name = name
        self.target = target
        self.log_path = log_path
        self.returncode = returncode

    @property
    def ok(self):
        return self.returncode == 0

    @property
    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def describe(self):
        lines = self.log.rstrip().splitlines()
        tail = "\n".join(lines[-60:])
        return "building examples/%s (isolated pip install) exited with %r; log %s, last lines:\n%s" % (
            self.name, self.returncode, self.log_path, tail)


def _installed_record():
    """The (path, hash) pairs of the installed exitguard's own files, from its RECORD."""
    from importlib import metadata

    dist = metadata.distribution("exitguard")
    text = dist.read_text("RECORD") or ""
    return _record_entries(text)


def _record_entries(text):
    entries = set()
    for line in text.splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[0].startswith("exitguard/") and parts[1]:
            entries.add((parts[0], parts[1]))
    return entries


def _wheel_record(path):
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        return _record_entries(z.read(name).decode())


def exitguard_wheel(scratch):
    """A folder holding a wheel of exactly the exitguard installed here; builds one if needed."""
    import exitguard

    installed = _installed_record()
    pattern = "exitguard-%s-*.whl" % exitguard.__version__
    given = os.environ.get("EXITGUARD_TEST_WHEELHOUSE")
    if given:
        # check_packaging.py: the wheel under test, installed here from that folder.
        for wheel in glob.glob(os.path.join(given, pattern)):
            if _wheel_record(wheel) == installed:
                return given
        raise RuntimeError("EXITGUARD_TEST_WHEELHOUSE=%s holds no %s matching the installed exitguard"
                           % (given, pattern))
    kept = os.path.join(sys.prefix, "wheelhouse")
    for wheel in glob.glob(os.path.join(kept, pattern)):
        if installed and _wheel_record(wheel) == installed:
            return kept
    out = os.path.join(scratch, "wheelhouse")
    os.makedirs(out, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out, ROOT],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )
    if proc.returncode != 0:
        raise RuntimeError("building the exitguard wheel failed:\n%s\n%s" % (proc.stdout, proc.stderr))
    if not glob.glob(os.path.join(out, pattern)):
        raise RuntimeError("pip wheel made no %s in %s" % (pattern, out))
    return out


def _copy_example(name, dest):
    shutil.copytree(os.path.join(EXAMPLES, name), dest,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.so", "*.c.tmp"))


def _build_one(name, scratch, wheelhouse, constraint, env_extra):
    src = os.path.join(scratch, "src", name)
    target = os.path.join(scratch, "site", name)
    log_path = os.path.join(scratch, "%s.log" % name)
    _copy_example(name, src)
    env = dict(os.environ)
    env["PIP_CONSTRAINT"] = constraint       # also read by pip inside the build environment
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("PYTHONPATH", None)
    env.update(env_extra or {})
    # -v: the build backend's own output goes to the log, where the tests read
    # what CMake and meson found.
    cmd = [sys.executable, "-m", "pip", "install", "-v", "--no-deps",
           "--target", target, "--find-links", wheelhouse, src]
    with open(log_path, "w") as log:
        log.write("$ %s\n" % " ".join(cmd))
        log.flush()
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                timeout=BUILD_TIMEOUT, cwd=scratch).returncode
        except subprocess.TimeoutExpired:
            log.write("\n(timed out after %d s)\n" % BUILD_TIMEOUT)
            rc = "timeout"
    return BuildResult(name, target, log_path, rc)


def pkg_config():
    """A pkg-config program and the environment that points it at exitguard.pc.

    The program is the system's, or -- Python >= 3.10, when the machine has none (the
    sid chroot) -- the binary inside the PyPI ``pkgconf`` wheel, installed into this
    environment and handed to meson as PKG_CONFIG (its Python wrapper script cannot
    run inside pip's isolated build, which hides this environment's site-packages).
    Returns (program, env), or None when no pkg-config can be had here.
    """
    import exitguard

    env = {"PKG_CONFIG_PATH": exitguard.get_pkgconfig_dir()}
    system = shutil.which("pkg-config")
    if system:
        return system, env
    if sys.version_info < (3, 10):
        return None
    find = [sys.executable, "-c", "import pkgconf; print(pkgconf.get_executable())"]
    proc = subprocess.run(find, capture_output=True, text=True)
    if proc.returncode != 0:
        install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--only-binary", ":all:", "pkgconf"],
                                 capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        if install.returncode != 0:
            raise RuntimeError("installing pkgconf from the package index failed:\n" + install.stdout + install.stderr)
        proc = subprocess.run(find, capture_output=True, text=True, check=True)
    program = proc.stdout.strip()
    env["PKG_CONFIG"] = program
    return program, env


def _pkg_config_env():
    found = pkg_config()
    return None if found is None else found[1]


# key -> (example folder, how to build it): the builds the tests ask for.
BUILDS = {
    "ticker": ("ticker", None),
    "cmake_pinger": ("cmake_pinger", None),
    # The same meson project twice: through pkg-config, and in a plain isolated
    # build where nothing names the build environment's exitguard.pc (the second
    # only once per CI run: see ONCE).
    "meson_pkg_config": ("meson_dropper", "pkg-config"),
    "meson_isolated": ("meson_dropper", {"PKG_CONFIG_PATH": ""}),
    "cython_worker": ("cython_worker", None),
    "pybind11_pool": ("pybind11_pool", None),
    "nanobind_ticker": ("nanobind_ticker", None),
}

# Builds that prove nothing more on a second interpreter (the same C file, the same
# meson code path), kept out of the per-interpreter `make test` for CI's time budget:
# they run when EXITGUARD_TEST_ONCE_PER_RUN=1, which `make check-packaging` sets.
ONCE = {"meson_isolated"}
NOT_THIS_RUN = ("built once per CI run, by `make check-packaging` (EXITGUARD_TEST_ONCE_PER_RUN=1), "
                "not on every interpreter")

NO_PKG_CONFIG = ("no pkg-config program here, and the PyPI pkgconf wheel needs Python >= 3.10: "
                 "the pkg-config route cannot be built on this interpreter")


def build_examples(keys, scratch):
    """Build the examples named by `keys` (see BUILDS) in parallel; returns {key: BuildResult}.

    A key whose build cannot be set up here maps to a string saying why.
    """
    import exitguard

    os.makedirs(scratch, exist_ok=True)
    requests = []
    results = {}
    once = os.environ.get("EXITGUARD_TEST_ONCE_PER_RUN") == "1"
    for key in keys:
        name, env = BUILDS[key]
        if key in ONCE and not once:
            results[key] = NOT_THIS_RUN
            continue
        if env == "pkg-config":
            env = _pkg_config_env()
            if env is None:
                results[key] = NO_PKG_CONFIG
                continue
        requests.append((key, name, env))
    if not requests:
        return results
    wheelhouse = exitguard_wheel(scratch)
    constraint = os.path.join(scratch, "constraints.txt")
    with open(constraint, "w") as f:
        f.write("exitguard==%s\n" % exitguard.__version__)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            key: pool.submit(_build_one, name, os.path.join(scratch, key), wheelhouse, constraint, env)
            for key, name, env in requests
        }
        for key, fut in futures.items():
            results[key] = fut.result()
    return results
