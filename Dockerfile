# Parley's web image: daphne serving config.asgi, with the bundled model and voice.
FROM python:3.11-slim

# llama-cpp-python builds from source.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
# An image runs on other hosts than the one that built it: on x86-64, llama.cpp is built
# for AVX2/FMA/F16C rather than -march=native (the Makefile says why).
RUN if [ "$(uname -m)" = x86_64 ]; then export CMAKE_ARGS=-DGGML_NATIVE=OFF; fi \
    && pip install --no-cache-dir -r requirements.txt

COPY . .
ENV DJANGO_SETTINGS_MODULE=config.settings PYTHONUNBUFFERED=1
# The pages' JS and CSS (and the admin's) under hashed names, served by daphne with
# long-lived caching (config/static.py).
RUN python manage.py collectstatic --noinput --verbosity 0
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", \
     "--proxy-headers", "config.asgi:application"]
