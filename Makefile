install:
	python -m pip install -r requirements.txt
	python -m pip install --no-deps -e .

test:
	python -m pip install -r requirements-test.txt
	python -m pip install --no-deps -e .
	python -m pytest -q

.PHONY: install test
