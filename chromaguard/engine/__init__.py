"""The Chroma engine as a child process: start, supervise, lock its data dir, read its catalogue."""
