"""Editing: emotion codes (eq. 2), edit directions (eq. 5), texture editor (eqs. 3–4),
temporal smoothing (eqs. 17–19).

Import from the submodules, e.g. ``from emoedit.editing.emotion_code import emotion_code``;
this package file imports nothing so that each submodule loads on its own.
"""
