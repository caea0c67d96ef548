"""The money operations, one module per kind: movements (credit, debit, transfer), holds,
refunds, batches and wallet status. `base` holds what they share."""
