-- anomaly_swing_day: per (vin, cell) of one (date, fleet) telemetry partition, the
-- weighted sums of a least-squares fit of the cell's state of charge minus its pack's
-- against the pack's, over the readings at rest. A cell with less capacity than its
-- neighbours moves further in SoC for the same charge: its offset grows with the pack's
-- SoC (slope > 0, about the relative capacity deficit). Inputs: view `tele` (the
-- partition's files, duplicates possible), table `vehicles` (vin, chemistry,
-- capacity_ah), table `ocv_lut` (chemistry, mv, soc_pct, slope_mv_per_pct: the OCV curve
-- read off at every whole mV, slope 0 outside the curve), table `ocv_bins` (chemistry,
-- bin, slope_mv_per_pct: the slope of each 5 % SoC segment); variables dedup (the files
-- may hold duplicate (vin, seq) rows; false folds the window away), rest_c_rate,
-- default_capacity_ah.
-- Each reading is weighted by the square of the smaller of the cell's and the pack's OCV
-- slope: a 1 mV step is a large SoC step on the LFP plateau, a small one on the knees.
--   n          readings at rest
--   w, wx, wxx, wy, wxy   sums of w, w x, w x^2, w y, w x y with x the pack SoC (median
--              of its cells' SoC read off the OCV curve) [%] and y the cell's SoC minus x [%]
WITH dedup AS (
    SELECT vin, seq, current_a, cell_mv
    FROM tele
    QUALIFY NOT getvariable('dedup')
        OR row_number() OVER (PARTITION BY vin, seq ORDER BY received_at, worker) = 1
),
rest AS (
    SELECT d.vin, d.seq, v.chemistry, d.cell_mv
    FROM dedup d
    JOIN vehicles v USING (vin)
    WHERE abs(d.current_a) <= getvariable('rest_c_rate')
        * coalesce(v.capacity_ah, getvariable('default_capacity_ah'))
),
cells AS (
    SELECT vin, seq, chemistry,
           unnest(cell_mv)::INTEGER AS mv,
           unnest(range(len(cell_mv)))::SMALLINT AS cell
    FROM rest
),
socs AS (
    SELECT c.vin, c.seq, c.cell, c.chemistry, l.soc_pct, l.slope_mv_per_pct AS g_cell
    FROM cells c
    JOIN ocv_lut l ON l.chemistry = c.chemistry AND l.mv = c.mv
),
pack AS (
    SELECT vin, seq, any_value(chemistry) AS chemistry, median(soc_pct) AS pack_soc_pct
    FROM socs GROUP BY vin, seq
),
pack_g AS MATERIALIZED (
    -- the pack's slope looked up once per reading (MATERIALIZED: the planner would
    -- otherwise join the bins to every cell's row); the rows reach the sums below in the
    -- same order, so the floating-point sums keep their bytes
    SELECT p.vin, p.seq, p.pack_soc_pct, b.slope_mv_per_pct AS g_pack
    FROM pack p
    JOIN ocv_bins b ON b.chemistry = p.chemistry
        AND b.bin = least(greatest(floor(p.pack_soc_pct / 5), 0), 19)
),
pts AS (
    SELECT s.vin, s.cell, p.pack_soc_pct AS x, s.soc_pct - p.pack_soc_pct AS y,
           least(s.g_cell, p.g_pack) ^ 2 AS w
    FROM socs s
    JOIN pack_g p USING (vin, seq)
)
SELECT
    vin,
    cell,
    count(*) AS n,
    sum(w) AS w,
    sum(w * x) AS wx,
    sum(w * x * x) AS wxx,
    sum(w * y) AS wy,
    sum(w * x * y) AS wxy
FROM pts
GROUP BY vin, cell
ORDER BY vin, cell;
