"""The ``wsimm`` command line (installed as ``wsimm_cli``)."""
