# One image for every app service of docker-compose.yml: api, worker, worker-heartbeats,
# worker-batch, beat, flower.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAKIMA_DATA_DIR=/var/lib/makima

WORKDIR /srv/makima

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them
# (this layer is rebuilt only when pyproject.toml changes).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the code, installed without touching the dependencies above.
COPY README.md beat_schedule.py ./
COPY app ./app
COPY workers ./workers
RUN pip install --no-deps . \
    && useradd --system --create-home --home-dir /home/makima makima \
    && mkdir -p /var/lib/makima \
    && chown makima /var/lib/makima

# Celery refuses nothing as root but warns loudly; nothing here needs root.
USER makima
EXPOSE 8000 5555

# As `makima run` and the compose file start it: WebSocket frames no larger than a body, and a
# deadline for each request's line and headers (app.http.head_deadline).
CMD ["uvicorn", "app.http:app", "--host", "0.0.0.0", "--port", "8000", "--ws-per-message-deflate", "false", "--ws-max-size", "1048576", "--http", "app.http.head_deadline:HeadDeadlineProtocol"]
