# sourced: fla 0.6.0, fla-core and einops from the carried wheels (.whl/) into /tmp/fla, and this checkout
# and /tmp/fla on PYTHONPATH (the linear ops' baseline for the bench and device scripts)
python3 -m pip install -q --no-deps --no-index --target /tmp/fla .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD:/tmp/fla:$PYTHONPATH
