# First sketch: litefs-py in a container. FUSE needs --device /dev/fuse --cap-add SYS_ADMIN.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 libfuse3-dev pkg-config sqlite3 gcc \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/litefs-py
COPY pyproject.toml README.md ./
COPY litefs_py ./litefs_py
COPY mount ./mount
RUN pip install --no-cache-dir . && apt-get purge -y gcc && apt-get autoremove -y
RUN mkdir -p /litefs /var/lib/litefs
ENTRYPOINT ["/opt/litefs-py/mount/entrypoint.sh"]
