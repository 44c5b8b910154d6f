# syntax=docker/dockerfile:1
# One image for every Bulwark service; the command picks the service:
#   docker run bulwark:latest python -m services.<pkg>.main
# No HEALTHCHECK here: each service is probed differently (HTTP for gateway and venue-sim,
# `python -m libs.probe --file ...` for the others), see docker-compose.yml and k8s/.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, read from pyproject itself, so this layer is rebuilt only when they change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# Then the project itself (runtime dependencies only, no dev extras).
COPY . .
RUN pip install --no-deps .

FROM python:3.11-slim
# tini as PID 1: forwards SIGTERM to the service (graceful drain) and reaps zombies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 bulwark \
    && useradd --system --uid 10001 --gid bulwark --home-dir /home/bulwark --create-home bulwark
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BULWARK_GATEWAY_HOST=0.0.0.0 \
    BULWARK_ALIVE_FILE=/tmp/bulwark-alive
WORKDIR /home/bulwark
USER 10001:10001
EXPOSE 8000 8100
# Kubernetes: set only `args` (not `command`), so tini stays the entrypoint.
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "services.gateway.main"]
