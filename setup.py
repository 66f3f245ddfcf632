"""The compiled part of dataforge: the MinHash kernels (tokenize, shingle, sign, verify) in C,
with AVX-512 / AVX2 variants chosen at run time. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("dataforge.text._kernels", sources=["dataforge/text/_kernels.c"], extra_compile_args=["-O3"]),
    ]
)
