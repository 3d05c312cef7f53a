"""Everything is in pyproject.toml but the native relay: setuptools compiles it through
cffi's ffibuilder (tpmsniff/_native/build.py), as tpm2-pytss builds its bindings, so
`pip install .` and a wheel from `python -m build` carry tpmsniff/_native/_relay.*.so."""

from setuptools import setup

setup(cffi_modules=["tpmsniff/_native/build.py:ffibuilder"])
