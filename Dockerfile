# The steel-defect web GUI and REST API on a CPU.
#   docker build -t steel-defect .
#   docker run --rm -p 8000:8000 -v "$PWD/work/demo:/app/work/demo:ro" steel-defect
# then open http://127.0.0.1:8000. The volume holds the model `make demo` trained; to serve
# other checkpoints mount them and pass `steel-defect serve --host 0.0.0.0 --checkpoints ...`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NO_ALBUMENTATIONS_UPDATE=1

# libturbojpeg0: jpeg4py decodes JPEGs with it (OpenCV is the slower fallback).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libturbojpeg0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY setup.py pyproject.toml README.md ./
COPY src ./src
# pip < 24.1: newer pip rejects catalyst 22.4's metadata. The CPU index keeps torch ~5x smaller;
# drop it for a CUDA image.
RUN pip install "pip==24.0" \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu -e ".[web,onnx]" \
    && ln -s src/steel_defect/configs configs

RUN useradd --create-home --uid 1000 steel
USER 1000

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health')"]
CMD ["steel-defect", "serve", "--host", "0.0.0.0", "--port", "8000"]
