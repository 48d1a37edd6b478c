"""The main job on built-in data, on its own (top layer: may import avdata, avhubert, clustering, preparation).

Modules: `run` (`make demo` / `python -m demo.run`: corpus -> clustering -> pre-training -> fine-tuning
-> decoding -> report), `corpus/` (espeak-ng speech + rendered mouth videos; CLI `python -m demo.make_corpus`),
`synthetic_data` (tiny tone + ellipse corpus for tests and smoke runs; CLI `python -m demo.synthetic_data`),
`fast_malloc` (tcmalloc for CPU trainers).
"""
