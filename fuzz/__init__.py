"""Property-based fuzz targets (hypothesis) for every parser fed by the wire; see README.md."""
