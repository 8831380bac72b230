# Two entry points, each doing all the set-up on a fresh machine (Python >= 3.10 with venv):
#   make demo   the main job: prune, compile, run on TensorFlow tensors, compare with tf.nn.conv2d
#   make test   the test suite (CPU; tests marked `gpu` run only where TVM sees a GPU)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalls when pyproject.toml, requirements-tfmot.txt or the TensorFlow op's source changes. CPU
# TensorFlow here; see README for the GPU build. The last step builds the TensorFlow op library with
# the system C++ compiler (cached; it says what to install if there is no compiler).
$(STAMP): pyproject.toml requirements-tfmot.txt tvm_sparseconv/tf_op/tvm_sparseconv_tf.cc | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,tools]"
	$(PY) -m pip install -q --no-deps -r requirements-tfmot.txt
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m tvm_sparseconv.tf_op
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV)
