"""The one place where exceptions become errnos.

Only `pyfuse3.FUSEError` may leave a handler: anything else ends `pyfuse3.main()` and leaves a
dead mount ("Transport endpoint is not connected"). OS errors keep their errno; anything else
is a bug: logged with its traceback and answered with EIO, and the mount keeps serving.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

log = logging.getLogger("litefs.fuse")

P = ParamSpec("P")
R = TypeVar("R")


def to_fuse_error(exc: BaseException, what: str) -> pyfuse3.FUSEError:
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    if isinstance(exc, OSError) and exc.errno:
        return pyfuse3.FUSEError(exc.errno)
    log.exception("internal error in %s; answering EIO", what)
    return pyfuse3.FUSEError(errno.EIO)


def fuse_boundary(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise to_fuse_error(exc, fn.__name__) from None

    return wrapper
