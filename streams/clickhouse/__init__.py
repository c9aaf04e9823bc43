"""The warehouse adapter: table contracts, inserts, queries, migrations."""
