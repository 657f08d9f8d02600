# litefs-py container image (docs/deploy.md).
#
#   docker build -t litefs-py .            (or: podman build -t litefs-py .)
#   docker run --device /dev/fuse --cap-add SYS_ADMIN \
#       -v ./litefs.yml:/etc/litefs.yml:ro -v litefs-data:/var/lib/litefs litefs-py [APP ARGS...]
#
# Two stages: `build` has the compilers and headers and makes the wheels (pyfuse3 against
# libfuse3, litefs-py with its two C modules); the final stage has only the runtime libraries
# and the virtualenv /opt/litefs, which an app image on the same base can take as it is:
#   COPY --from=litefs-py /opt/litefs /opt/litefs
# BASE must be a Debian (or Ubuntu) image with python3 >= 3.11: the official Python image by
# default; the tests use a local debootstrap root with Debian's python3 instead.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# The venv module and headers come with the official Python images; Debian's python3 needs
# its -venv and -dev packages.
RUN set -eux; \
    pkgs="gcc libc6-dev pkg-config libfuse3-dev"; \
    python3 -c 'import ensurepip' 2>/dev/null || pkgs="$pkgs python3-venv"; \
    python3 -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
        2>/dev/null || pkgs="$pkgs python3-dev"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/litefs \
 && /opt/litefs/bin/pip install --no-cache-dir --upgrade pip wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY litefs_py ./litefs_py
# setup.py's C modules are optional (a machine without a compiler still gets a working
# install), so check here that both were built: the image must never ship the slow path.
RUN /opt/litefs/bin/pip wheel --no-cache-dir --wheel-dir /wheels . \
 && /opt/litefs/bin/pip install --no-cache-dir --no-index --find-links /wheels litefs-py \
 && /opt/litefs/bin/litefs version \
 && test "$(/opt/litefs/bin/litefs version | grep -c ': compiled')" = 2

FROM ${BASE}
# Runtime libraries only: FUSE 3 (fusermount3, libfuse3) and the sqlite3 shell for operators.
# CA certificates for HTTPS to the bucket come with the base image.
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        fuse3 libfuse3-3 sqlite3; \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/litefs /opt/litefs
COPY mount/entrypoint.sh /usr/local/bin/litefs-entrypoint
ENV PATH=/opt/litefs/bin:$PATH
RUN mkdir -p /litefs /var/lib/litefs && litefs version
# litefs passes SIGTERM to the app, waits for it, drains uploads, unmounts, and exits with the
# app's status (128+N when signal N ended it: 143 for SIGTERM).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/litefs-entrypoint"]
