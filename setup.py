"""Build pinstack's C extensions, one per engine:

    pinstack._core._cache   src/_core/cache/_cache.pyx   pinstack-cache's engine
    pinstack._core._bench   src/_core/bench/_bench.pyx   pinstack-bench's load loop
    pinstack._core._index   src/_core/index/_index.pyx   pinstack-leaf's realtime segment

Each is its Cython wrapper compiled together with every C file of its
directory and of src/_core/common/, found by globbing at build time, so an
engineer adding a module only adds the file. Include paths are src/_core
and the engine's own directory only: engines may reuse header names
(cache/proto.h, bench/proto.h) without clashing. Metadata lives in
pyproject.toml; this file holds only what needs code.

Build modes (environment variables, read at build time):

    PINSTACK_SANITIZE=1   -fsanitize=address,undefined -fno-omit-frame-pointer
                          -O1 -g, compile and link. Python itself is not
                          instrumented, so run with the runtime preloaded:
                          LD_PRELOAD="$(gcc -print-file-name=libasan.so)
                                      $(gcc -print-file-name=libubsan.so)"
    PINSTACK_DEBUG=1      -O0 -g
    (neither)             release: -O2

The C must build warning-free under -Wall -Wextra: ci/test.sh builds with
`pip install -v .` and fails on any compiler warning in the log.
"""

import os
import re
from glob import glob
from multiprocessing.pool import ThreadPool

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# pip runs setup.py from the project root; every path below is relative to it
# (setuptools wants relative source paths).
os.chdir(os.path.dirname(os.path.abspath(__file__)))

CORE = "src/_core"


def read_version():
    """__version__ from src/pinstack/_version.py, without importing the package."""
    with open("src/pinstack/_version.py", encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
    if match is None:
        raise RuntimeError("src/pinstack/_version.py: no __version__ line")
    return match.group(1)


def env_flag(name):
    return os.environ.get(name, "").strip() not in ("", "0")


def c_sources(*dirs):
    """Every .c file in `dirs`, sorted, minus Cython output left in the tree."""
    found = []
    for d in dirs:
        for path in sorted(glob(os.path.join(d, "*.c"))):
            if os.path.exists(path[:-2] + ".pyx"):  # generated from a .pyx
                continue
            found.append(path)
    return found


VERSION = read_version()
SANITIZE = env_flag("PINSTACK_SANITIZE")
DEBUG = env_flag("PINSTACK_DEBUG")

compile_args = ["-std=gnu11", "-pthread", "-Wall", "-Wextra", "-fvisibility=hidden"]
link_args = ["-pthread"]
if SANITIZE:
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    compile_args += sanitize + ["-O1", "-g"]
    link_args += sanitize
if DEBUG:
    compile_args += ["-O0", "-g"]  # after -O1 of a sanitizer build: last -O wins
if not SANITIZE and not DEBUG:
    compile_args += ["-O2"]  # after Python's own -O3 in CFLAGS: last -O wins


def engine_extension(engine, libraries):
    """pinstack._core._<engine> from src/_core/<engine>/ plus src/_core/common/."""
    return Extension(
        f"pinstack._core._{engine}",
        sources=[f"{CORE}/{engine}/_{engine}.pyx"]
        + c_sources(f"{CORE}/common", f"{CORE}/{engine}"),
        include_dirs=[CORE, f"{CORE}/{engine}"],
        depends=sorted(glob(f"{CORE}/common/*.h") + glob(f"{CORE}/{engine}/*.h")),
        define_macros=[("PS_PACKAGE_VERSION", f'"{VERSION}"')],
        libraries=libraries,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


extensions = [
    # liburing and OpenSSL are for the flash tier and TLS, linked from the
    # start so the wheel's runtime needs do not change under users' feet.
    engine_extension("cache", ["uring", "ssl", "crypto", "pthread", "m"]),
    engine_extension("bench", ["pthread", "m"]),
    engine_extension("index", ["pthread", "m", "lz4", "z"]),  # LZ4: stored fields; zlib: CRC-32
]


class BuildExt(build_ext):
    """build_ext that always rebuilds, compiling the C files in parallel.

    Always rebuilding: setuptools skips an extension whose .so is newer than
    its sources, which is wrong here twice over: a deleted source file (or a
    switch between release and sanitizer builds, which share build/) leaves
    every remaining source older than the .so. The whole core compiles in
    seconds, so correctness wins.
    """

    def build_extensions(self):
        self.force = True
        compiler = self.compiler
        jobs = os.cpu_count() or 1

        def compile_parallel(
            sources,
            output_dir=None,
            macros=None,
            include_dirs=None,
            debug=0,
            extra_preargs=None,
            extra_postargs=None,
            depends=None,
        ):
            # Same steps as CCompiler.compile(), one thread per gcc process.
            macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
                output_dir, macros, include_dirs, sources, depends, extra_postargs
            )
            cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)

            def compile_one(obj):
                src, ext = build[obj]
                compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

            with ThreadPool(jobs) as pool:
                pool.map(compile_one, objects)
            return objects

        compiler.compile = compile_parallel
        super().build_extensions()


setup(
    version=VERSION,
    ext_modules=cythonize(
        extensions,
        build_dir="build/cython",  # keep generated C out of the source tree
        compiler_directives={
            "language_level": 3,
            "embedsignature": True,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
