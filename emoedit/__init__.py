"""emoedit: continuous emotion editing of talking-head video.

The library package. It never imports Lightning: the training systems live in the
top-level ``lightning_modules/`` and ``datamodules/`` packages and import from here.
"""

__version__ = "0.1.0"
