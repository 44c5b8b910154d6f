-- The single FM-N7 resend of an order whose submit was UNKNOWN, once used, is part of the order's
-- projection: a restart that rebuilds memory from this table (no valid snapshot) must not resend it
-- a second time, and `/v1/orders/{id}` shows whether it was resent. Rebuilt from `OrderStatusUnknown`
-- events (`resend`), like every other column.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS resend_used boolean NOT NULL DEFAULT false;
