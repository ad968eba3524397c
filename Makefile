# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both set up .venv on first use (scripts/setup.sh, idempotent).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samtrack-setup-done
VIDEO ?=
PROMPTS ?=
PYTEST_ARGS ?=

.PHONY: setup demo test test-all bench screenshot clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m samtrack.demo $(if $(VIDEO),--video "$(VIDEO)") $(if $(PROMPTS),--prompts "$(PROMPTS)")

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/frame_store.py

# the README's viewer screenshot, from the demo's result (needs `make demo` first)
screenshot: $(STAMP)
	xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/samtrack view demo_out/sample.mp4 --result demo_out/job \
		--frame 40 --screenshot docs/viewer.png

clean:
	rm -rf .pytest_cache demo_out bench_out
