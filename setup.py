"""Builds CBP's C kernel (cbp_rl/_kernels.c); the rest of the package is declared in pyproject.toml.

The kernel is optional: without a C compiler the install goes on and CBP uses torch ops (cbp_rl/kernels.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cbp_rl._kernels", sources=["cbp_rl/_kernels.c"], optional=True)])
