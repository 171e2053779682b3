# Shortcuts; the README's commands do the same without make.
PY ?= python3
CHAPTERS ?= $(wildcard book/[0-9][0-9]_*.ipynb)

.PHONY: setup book test outputs clean

setup:  ## create .venv and install everything
	$(PY) -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt

book:  ## build the HTML book from the committed outputs (open _build/html/index.html)
	rm -rf _build && jupyter-book build . -W -n --keep-going

test:  ## unit tests + every chapter executed with the quick budget
	pytest

outputs:  ## re-execute the chapters in place at FULL budget (what the online book shows)
	VIT_QUICK=0 jupyter nbconvert --to notebook --execute --inplace $(CHAPTERS)

clean:
	rm -rf _build .pytest_cache
