"""Rating with no server at all: rate a file, compare outputs, generate data."""
