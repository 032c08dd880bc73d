"""rgalign: the core ML library of rgalign-rec."""
__version__ = "0.1.0"
