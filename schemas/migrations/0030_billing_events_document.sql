-- Issue 24 (invoices): an issued document rides on its ledger event. One ALTER, alone in
-- its file.
--   document  on InvoiceIssued, CreditNoteIssued and DebitNoteIssued: the document as
--             issued (schemas.invoices.InvoiceDocument as JSON: lines, rates, VAT,
--             totals), so asking again or a rebuild shows exactly it; '' on every other kind
ALTER TABLE billing_events ADD COLUMN document String DEFAULT '';
