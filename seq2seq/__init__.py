"""Sequence-to-sequence translation: data, models, decoding, export and serving."""

import os as _os

__version__ = "0.1.0"

# SEQ2SEQ_EXTENSION_DIR: a folder with another build of the engine (a seq2seq/_C*.so, e.g.
# one compiled for a lesser CPU by `make test-avx2`), found before the one in this package.
if _os.environ.get("SEQ2SEQ_EXTENSION_DIR"):
    __path__.insert(0, _os.environ["SEQ2SEQ_EXTENSION_DIR"])
