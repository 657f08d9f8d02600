"""Build hook for the one compiled module; everything else is in pyproject.toml.

`litefs_py.ltx._frames` is the decoder's hot loop in C (see its header comment). It is
optional: without a C compiler the install still succeeds and the decoder uses its pure
Python loop (same results, about 1.6x slower decoding; `litefs version` says which).
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("litefs_py.ltx._frames", ["litefs_py/ltx/_frames.c"], optional=True,
              extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"]),
])
