# One image for every cookbook container: the provider sandbox and each example's worker and
# gateway (docker-compose.yml picks the module with `command: [python, -m, <module>]`).
#
# It installs exactly what uv.lock pins for the whole workspace (shared/ and every examples/*),
# without the dev tools, as wheels into /app/.venv. A new example under examples/ needs no change
# here. Validated statically by tests/test_compose.py; no Docker engine runs where the cookbook
# is tested.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The same uv the Makefile uses, from PyPI.
RUN pip install --no-cache-dir --disable-pip-version-check uv==0.13.8
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3
WORKDIR /app
# Third-party dependencies first, from the lock alone: this layer is rebuilt only when uv.lock
# (or the workspace's member list) changes, not on every code edit.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --all-packages --no-dev --no-install-workspace
# Then the cookbook's own packages, as wheels rather than editable installs, so the runtime
# stage needs the virtual environment only.
COPY shared shared
COPY examples examples
RUN uv sync --frozen --all-packages --no-dev --no-editable

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 cookbook \
    && mkdir /data \
    && chown cookbook /data
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1
# State (the sandbox's records, an example's SQLite files) goes to /data: a volume in compose.
WORKDIR /data
USER cookbook
CMD ["python", "-c", "print('resonate-cookbook image: run a module, e.g. python -m saga.worker')"]
