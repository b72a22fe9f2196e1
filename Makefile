install:
	python -m pip install -r requirements.txt
	python -m pip install --no-deps -e .

test:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)  # browser tests
	python -m pip install -r requirements-test.txt
	python -m pip install --no-deps -e .
	python -m pytest -q

.PHONY: install test
