-- Batched matching (HAIL_MATCHING=batch): an offer chosen in a batch says so in the audit
-- log — the window it was collected over, how many trips its solve weighed together, and
-- how long that solve took. NULL for offers made one trip at a time. (Its cost is its
-- pickup_eta_s.)
ALTER TABLE offers ADD COLUMN batch_window_ms BIGINT;
ALTER TABLE offers ADD COLUMN batch_size INTEGER;
ALTER TABLE offers ADD COLUMN batch_solve_us BIGINT;
