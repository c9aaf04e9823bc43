"""The Faust worker: rate cdr.raw in batches, send the outputs, keep each account's state, land the rows."""
