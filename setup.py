"""The compiled part of dataforge: the MinHash kernels (tokenize, shingle, sign, verify) in C,
with AVX-512 / AVX2 variants chosen at run time, and the XXH3-128 key hashes (xxHash's header,
vendored in dataforge/text/vendor). Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dataforge.text._kernels",
            sources=["dataforge/text/_kernels.c"],
            depends=["dataforge/text/vendor/xxhash.h"],
            extra_compile_args=["-O3"],
        ),
    ]
)
