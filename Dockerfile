# syntax=docker/dockerfile:1
# tusd-py container image: a multi-stage build on the slim Python image; the daemon runs
# as an unprivileged user with its config at /etc/tusd-py/tusd.yaml and data in /data.
#   docker build -t tusd-py .
#   docker run --init -p 8080:8080 -v tusd-data:/data tusd-py
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/tusd-py
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt ./requirements/constraints.txt
COPY tusd_py ./tusd_py
# The package with every storage driver (s3, gcs, azure) and uvloop, at the versions CI
# tests (requirements/constraints.txt), not whatever is newest on PyPI at build time.
RUN /opt/tusd-py/bin/pip install --no-cache-dir -c requirements/constraints.txt ".[all]"

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="tusd-py" \
      org.opencontainers.image.description="tus 1.0.0 resumable upload server" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/tusd-py/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TUSD_CONFIG=/etc/tusd-py/tusd.yaml
RUN groupadd --system --gid 10001 tusd \
    && useradd --system --uid 10001 --gid tusd --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin tusd \
    && mkdir -p /data \
    && chown tusd:tusd /data
COPY --from=build /opt/tusd-py /opt/tusd-py
COPY deploy/tusd.yaml /etc/tusd-py/tusd.yaml
USER 10001:10001
# The local driver's default data_dir (./data) is then the volume, /data.
WORKDIR /
VOLUME ["/data"]
EXPOSE 8080
# SIGTERM: in-flight uploads get server.shutdown_grace (25s in deploy/tusd.yaml), their
# bytes are committed, and the process exits 0 within shutdown_grace + 2s
# (tusd_py.http.server.SHUTDOWN_MARGIN). Give the container longer than that before SIGKILL
# (docker stop -t 35, compose stop_grace_period: 35s).
STOPSIGNAL SIGTERM
# tusd-py healthcheck reads the same config as serve (TUSD_CONFIG, TUSD_* env) and probes
# the port it configures: TUSD_SERVER__PORT=9000 moves the check along with the daemon.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["tusd-py", "healthcheck"]
ENTRYPOINT ["tusd-py"]
CMD ["serve"]
