-- Issue 24: invoices, credit notes and debit notes, and their lines, for finance (the tax
-- return: `cdrflow report tax`). Both are written by the ledger sink from the documents
-- the InvoiceIssued / CreditNoteIssued / DebitNoteIssued events carry (billing_events.
-- document), so a replay inserts identical rows again: ReplacingMergeTree collapses them;
-- read with FINAL. Money in units of 0.0001 CNY, whole fen; + charged, - given back.
CREATE TABLE IF NOT EXISTS invoices (
    -- the seller's number: one sequence per seller, no gaps (docs/finance.md)
    invoice_no String,
    seller_id String,
    -- invoice | credit_note | debit_note
    kind String,
    account_id String,
    -- an invoice's month; a note's: the month it was issued in (YYYY-MM, plan timezone)
    month String,
    issued_time DateTime('UTC'),
    -- the local day it was issued (plan timezone): the tax return's period
    issued_day Date,
    -- a note: the invoice it corrects and that invoice's month ('' for an invoice)
    corrects String DEFAULT '',
    corrects_month String DEFAULT '',
    gross Int64,
    tax Int64,
    net Int64,
    line_count UInt32,
    event_id String,
    version UInt64 DEFAULT 0
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(issued_day)
ORDER BY (seller_id, invoice_no);

-- One row per line of a document, with its VAT category and rate.
CREATE TABLE IF NOT EXISTS invoice_lines (
    invoice_no String,
    seller_id String,
    -- the line's position in its document (from 1)
    line UInt32,
    kind String,
    account_id String,
    month String,
    issued_day Date,
    -- calls, rent, service, minimum_spend, keep_number_fee, opening_fee, selection_fee,
    -- package, early_termination, package_refund, sla_credit, correction
    line_kind String,
    -- the call class, service, number, SLA day or correction id ('' when none)
    item String,
    -- the month of the charges the line bills (a late charge: an earlier month)
    charge_month String,
    description String,
    quantity Int64,
    -- billable seconds of a calls line
    seconds Int64,
    -- basic_telecom | value_added_telecom
    category String,
    -- the VAT rate as a decimal string, e.g. '0.09'
    rate String,
    gross Int64,
    tax Int64,
    net Int64,
    version UInt64 DEFAULT 0
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(issued_day)
ORDER BY (seller_id, invoice_no, line);
