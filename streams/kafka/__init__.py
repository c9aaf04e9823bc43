"""The broker clients: producers, readers, offsets."""
