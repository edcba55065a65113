# Task runner. `make test` is what CI runs (.ci/run) and what the README's quick start uses.
.PHONY: setup test test-fast demo lint molecule sanity build clean lab-image

setup:            ## venv, Docker engine, lab image, local services
	bash scripts/setup.sh

test: setup       ## everything CI runs
	bash scripts/test.sh all

test-fast:        ## lint + unit tests, no Docker (needs `make setup` once)
	bash scripts/test.sh fast

demo: setup       ## the main job: lab up, two releases of the whole stack dev -> prod, prod rolled back
	bash scripts/demo.sh

molecule: setup   ## all Molecule scenarios (or: scripts/test.sh molecule release)
	bash scripts/test.sh molecule

lab-image:
	bash scripts/lab-image.sh

build:            ## the collection tarball in dist/
	.venv/bin/ansible-galaxy collection build --force --output-path dist collections/ansible_collections/unistra/itop

clean:
	rm -rf dist .pytest_cache .ruff_cache .mypy_cache
