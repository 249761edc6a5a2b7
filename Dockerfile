# Supernova worker/producer image, used by docker-compose.yml.
#   docker compose up -d                                  # kafka + worker
#   docker compose --profile producer run --rm producer   # replay fraudTest into kafka
FROM python:3.11-slim

# LightGBM's wheel links the OpenMP runtime (libgomp), which slim images lack.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, read from pyproject.toml, in their own layer: code edits
# then rebuild in seconds instead of reinstalling pandas/pyarrow/lightgbm.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Only what the package and the compose commands need (no .venv, .git, .kafka
# from a developer's tree). Keep in step with [tool.setuptools] packages.
COPY entities ./entities
COPY models ./models
COPY streams ./streams
RUN pip install --no-deps .
# The worker's --spec and the demo sample live here.
COPY examples ./examples

# Not root; /data is owned by that user so a fresh named volume is writable.
RUN useradd --create-home --uid 10001 supernova \
    && mkdir -p /data \
    && chown supernova /data
USER supernova
VOLUME ["/data"]

CMD ["supernova", "--help"]
