# One image for web, worker, beat and Flower; docker-compose.yml picks the command.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app

WORKDIR /app

# The pinned list only: the image installs what `make install` installs for
# production, nothing that the tests alone need.
COPY requirements.txt ./
RUN pip install --no-compile -r requirements.txt

COPY --chown=app:app . .

# Static files are baked into the image (whitenoise serves them from
# var/static); var/beat is where the beat service keeps its schedule volume.
RUN DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v0 \
 && mkdir -p var/beat \
 && chown -R app:app var

USER app

EXPOSE 8000 5555
CMD ["gunicorn", "project.wsgi", "--bind", "0.0.0.0:8000", "--access-logfile", "-"]
