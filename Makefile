# Entry points; each one runs its own set-up first (scripts/setup.sh, scripts/setup-test.sh).
.PHONY: test test-full study lint

test:       ## the fast tests (~2 min on 2 cores): everything but the end-to-end runs marked slow
	bash scripts/test.sh -m "not slow"

test-full:  ## every test, as CI runs them (the README's bash scripts/test.sh)
	bash scripts/test.sh

study:      ## the main job: dvc repro of params.yaml's profile
	bash scripts/study.sh

lint:       ## ruff: lint (incl. the no-unpickling rules S301, S506) and format
	bash scripts/setup-test.sh
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
