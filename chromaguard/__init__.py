"""chromaguard: a production front door, supervisor and doctor for the Chroma vector database."""

__version__ = "0.1.0"
