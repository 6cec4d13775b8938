# The image every cpflow Deployment runs: `python -m services.<name>` (k8s/, docker-compose.yml).
#   docker build -t cpflow:0.1.0 .
# Two stages: the project is installed into a virtualenv in the first, only the venv is copied
# into the second. No Kafka jars (the broker is Strimzi's or the kafka image), no secrets (all
# credentials come from the environment at run time), runs as an unprivileged user.
FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/cpflow
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY cpflow ./cpflow
# The postgres extra adds the PostgreSQL driver for the butler registry.
RUN /opt/cpflow/bin/pip install ".[postgres]" \
    && /opt/cpflow/bin/python -m compileall -q /opt/cpflow/lib

FROM python:3.12-slim-bookworm
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /scratch cpflow
COPY --from=build /opt/cpflow /opt/cpflow
ENV PATH=/opt/cpflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CPFLOW_HTTP_HOST=0.0.0.0 \
    HOME=/scratch \
    TMPDIR=/scratch
USER 10001:10001
WORKDIR /scratch
EXPOSE 8181 8182 8183 8184
ENTRYPOINT ["python", "-m"]
CMD ["services.acquirer"]
