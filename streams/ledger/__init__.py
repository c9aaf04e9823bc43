"""Ledger commands and corrections: published on the account's log, waited for until folded."""
