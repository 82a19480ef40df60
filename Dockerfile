# Ordinaut's image: one image for every role (web, scheduler, worker, migrate, mcp, manage).
#
#   docker build -t ordinaut .
#   docker run --rm ordinaut web            # see ops/entrypoint.sh for the roles
#
# BASE_IMAGE is any image with Python >= 3.12 and its venv module (the official slim image by
# default; `make test-containers` passes a local Debian one where no registry is reachable).
ARG BASE_IMAGE=python:3.12-slim-bookworm

# -- builder: the dependencies, in a virtualenv copied whole into the runtime stage --------
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# Wheels placed in ops/wheelhouse (none by default) are used first; PIP_INSTALL_OPTIONS
# "--no-index" builds from them alone where the index is unreachable.
COPY ops/wheelhouse/ /tmp/wheelhouse/
ARG PIP_INSTALL_OPTIONS=""
# Wheels only: no compiler in either stage, and a source build never sneaks in.
RUN /opt/venv/bin/pip install --only-binary=:all: --find-links /tmp/wheelhouse \
        ${PIP_INSTALL_OPTIONS} -r /tmp/requirements.txt

# -- runtime ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG UID=10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=ordinaut.settings \
    ORDINAUT_ENV_FILE="" \
    ORDINAUT_VAR_DIR=/tmp/ordinaut \
    PORT=8000 \
    WEB_CONCURRENCY=2
RUN (getent group ordinaut || groupadd --system --gid ${UID} ordinaut) \
    && useradd --system --uid ${UID} --gid ${UID} --home-dir /app --shell /usr/sbin/nologin ordinaut
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root . /app
# Bytecode compiled now: the root filesystem can be read-only at run time. (Static files need
# no step: whitenoise serves the admin's from the installed packages.)
RUN python -m compileall -q /app /opt/venv >/dev/null
USER ${UID}:${UID}
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/app/ops/entrypoint.sh"]
CMD ["web"]
