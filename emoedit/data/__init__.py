"""Data: the synthetic world, dataset readers (MEAD/FFHQ layouts), face detection and
alignment, and the preprocessed-cache format every DataModule reads."""
