# syntax=docker/dockerfile:1
# One image for every astroq process:
#   docker run IMAGE            -> astroq serve   (gateway, ASTROQ_PORT, default 8000)
#   docker run IMAGE matcher    -> astroq matcher (metrics on ASTROQ_METRICS_PORT, default 9100)
#   docker run IMAGE migrate    -> astroq migrate

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/astroq
ENV PATH=/opt/astroq/bin:$PATH

WORKDIR /src
# Dependencies first so that a code change does not reinstall them.
COPY pyproject.toml README.md* ./
# Every dependency ships wheels for CPython 3.11 on amd64 and arm64; wheels
# only, so a missing one fails here instead of needing compilers.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --only-binary=:all: -r /tmp/requirements.txt

COPY server ./server
COPY matcher ./matcher
COPY bench ./bench
COPY web ./web
RUN pip install --no-deps . && python -m compileall -q /opt/astroq

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 astroq \
    && useradd --system --uid 10001 --gid astroq --home-dir /app --shell /usr/sbin/nologin astroq

COPY --from=build /opt/astroq /opt/astroq
WORKDIR /app

ENV PATH=/opt/astroq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ASTROQ_HOST=0.0.0.0 \
    ASTROQ_PORT=8000 \
    ASTROQ_METRICS_PORT=9100

USER astroq:astroq
EXPOSE 8000 9100

# The gateway answers /healthz on ASTROQ_PORT, the matcher on
# ASTROQ_METRICS_PORT; PID 1's command line says which process this is.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; argv = open('/proc/1/cmdline', 'rb').read().split(b'\\0'); port = os.environ.get('ASTROQ_METRICS_PORT', '9100') if b'matcher' in argv else os.environ.get('ASTROQ_PORT', '8000'); urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=2)"]

ENTRYPOINT ["astroq"]
CMD ["serve"]
