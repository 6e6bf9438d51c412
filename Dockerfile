# One image for every app service of docker-compose.yml: api, worker, beat, flower.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAKIMA_DATA_DIR=/var/lib/makima

WORKDIR /srv/makima

# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY beat_schedule.py ./
COPY app ./app
COPY workers ./workers
RUN pip install . \
    && useradd --system --create-home --home-dir /home/makima makima \
    && mkdir -p /var/lib/makima \
    && chown makima /var/lib/makima

# Celery refuses nothing as root but warns loudly; nothing here needs root.
USER makima
EXPOSE 8000 5555

CMD ["uvicorn", "app.http:app", "--host", "0.0.0.0", "--port", "8000"]
