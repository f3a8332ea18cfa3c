# hpa-pipeline: every target sets itself up from a fresh clone (a .venv in the checkout).
# Installing is idempotent: the stamp file is only rebuilt when setup.cfg or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HPA    := $(BIN)/hpa-pipe

# make ingest: where the real archives and CSVs are, where the stores go, and the top level size.
DATA ?= data
OUT  ?= data
SIZE ?= 1024
DEMO ?= build/demo
RECIPE ?= pipelines/ingest.yaml

.PHONY: install test test-fast demo demo-images ingest train-cv docs bench bench-gpu clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# the loop to run between edits: pure functions and small in-process stores
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration"

demo: install
	$(HPA) --config pipelines/demo.yaml synth --out $(DEMO)
	$(MAKE) --no-print-directory ingest DATA=$(DEMO) OUT=$(DEMO) SIZE=256 RECIPE=pipelines/demo.yaml
	$(HPA) inspect $(DEMO)/train.zarr --montage $(DEMO)/train_montage.png
	# external data as the top solutions used it (HPA v18-style JPEGs): always trained on, never validated
	$(HPA) synth --out $(DEMO)/v18 --form jpeg-folder --n-train 160 --image-sizes 256 --seed 1
	$(HPA) --config pipelines/demo.yaml build-zarr --src $(DEMO)/v18/hpa_v18 --csv $(DEMO)/v18/HPAv18RBGY_wodpl.csv \
		--out $(DEMO)/hpa_v18.zarr --size 256
	$(HPA) --config pipelines/demo.yaml train --store $(DEMO)/train.zarr --external $(DEMO)/hpa_v18.zarr \
		--out $(DEMO)/cv --resume
	$(HPA) --config pipelines/demo.yaml predict --store $(DEMO)/test.zarr --run $(DEMO)/cv --out $(DEMO)/submission.csv
	$(HPA) evaluate --submission $(DEMO)/submission.csv --labels $(DEMO)/test_labels.csv
	# the model leaves the project: a bioimage.io package, and raw images classified with it (no store)
	$(HPA) export $(DEMO)/cv --out $(DEMO)/package
	$(HPA) classify $(DEMO)/test_full_size.7z --model $(DEMO)/package --out $(DEMO)/classified.csv

# Both archives into train.zarr and test.zarr; resumable (run it again after a crash).
# Runs both even if the first reports failed samples; exits 3 if either did (see report.json).
ingest: install
	@rc=0; \
	$(HPA) --config $(RECIPE) ingest $(DATA)/train_full_size.7z --csv $(DATA)/train.csv \
		--out $(OUT)/train.zarr --size $(SIZE) || rc=$$?; \
	$(HPA) --config $(RECIPE) ingest $(DATA)/test_full_size.7z --csv $(DATA)/sample_submission.csv \
		--out $(OUT)/test.zarr --size $(SIZE) || rc=$$?; \
	exit $$rc

# The cross-validated workflow (pipelines/cv.yaml) on the stores of make ingest: every fold,
# the out-of-fold macro F1, and a submission from all folds. Resumable: run it again after a crash.
train-cv: install
	$(HPA) --config pipelines/cv.yaml train --store $(OUT)/train.zarr --out $(OUT)/cv --resume
	$(HPA) --config pipelines/cv.yaml predict --store $(OUT)/test.zarr --run $(OUT)/cv --out $(OUT)/submission.csv

# The home page's pictures of a demo run (make demo first): its first fold's curves and
# per-class F1, and the training store's montage; committed, so the site builds without a run.
demo-images:
	cp $(DEMO)/cv/fold0/curves.png docs/images/demo_curves.png
	cp $(DEMO)/cv/fold0/per_class_f1.png docs/images/demo_per_class_f1.png
	$(BIN)/python -c "from PIL import Image; Image.open('$(DEMO)/train_montage.png').convert('RGB').resize((768, 768)).save('docs/images/demo_montage.jpg', quality=85)"

# The documentation site into build/site/, offline; broken links fail (strict).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: install
	$(BIN)/python -m benchmarks $(BENCH)

# Every GPU figure (benchmarks/bench_gpu.py) on a CUDA machine; works without the venv on a bare
# GPU image with the wheels of benchmarks/device_wheels.sh in .whl/. Exit 2 where there is no GPU.
bench-gpu:
	bash benchmarks/run_gpu.sh

clean:
	rm -rf $(VENV) build .pytest_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
