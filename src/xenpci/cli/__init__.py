"""Command-line interface (layer 10): thin, calls the toolstack and below."""
