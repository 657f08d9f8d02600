"""Build hook for the compiled modules; everything else is in pyproject.toml.

- `litefs_py.ltx._frames`: the LTX decoder's page loop and the page-index encoding.
- `litefs_py.sqlite._walsum`: SQLite's WAL checksum.

Both are optional: without a C compiler the install still succeeds and the same code runs in
Python (same results, slower; `litefs version` says which). See each file's header comment.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]

setup(ext_modules=[
    Extension("litefs_py.ltx._frames", ["litefs_py/ltx/_frames.c"], optional=True,
              extra_compile_args=FLAGS),
    Extension("litefs_py.sqlite._walsum", ["litefs_py/sqlite/_walsum.c"], optional=True,
              extra_compile_args=FLAGS),
])
