"""CDR lines in: files, spool folders, files still being written and shipped topics onto cdr.raw / cdr.rejected."""
