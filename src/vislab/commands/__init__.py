"""Task commands of the ``vislab`` CLI (``vislab detect``, ...): one module per command, imported lazily by
``vislab.cli`` so that ``vislab --help`` does not import torch."""
