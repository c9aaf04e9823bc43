"""The tariff catalogue on its topics: published, read back, watched."""
