"""``make demo``: the whole method trained and measured on the built-in synthetic world.

- :func:`emoedit.demo.run.run_demo` — the stages, resumable (:mod:`emoedit.demo.stages`);
- :mod:`emoedit.demo.presets` — the ``quick``, ``demo`` and ``gpu`` sizes;
- :mod:`emoedit.demo.evaluation` — the numbers against the world's ground-truth edits.
"""
