"""Builds the compiled twins of the hot-path modules (see rpv/speedups.py); everything else
is in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("rpv.nbd._wire", ["rpv/nbd/_wire.pyx"], extra_compile_args=["-O2"]),
     Extension("rpv.protocol._hotpath", ["rpv/protocol/_hotpath.pyx"],
               extra_compile_args=["-O2"]),
     Extension("lvm._inline", ["lvm/_inline.pyx"], extra_compile_args=["-O2"])],
    compiler_directives={"language_level": "3"}, nthreads=2),
    options={"build_ext": {"parallel": 2}})  # the 2 cores of the CI machine
