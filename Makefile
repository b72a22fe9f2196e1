install:
	python -m pip install -r requirements.txt
	python -m pip install --no-deps -e .

test:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) \
		|| echo "Debian's chromium could not be installed: the browser test will skip"
	python -m pip install -r requirements-test.txt
	python -m pip install --no-deps -e .
	python -m pytest -q

# the docs' screenshots of the explorer (docs/screens/), from the running app in Debian's Chromium
screens:
	python tests/screens.py

.PHONY: install test screens
