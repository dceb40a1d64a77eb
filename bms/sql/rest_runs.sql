-- rest_runs: the day's rest periods (consecutive readings with |current| <= rest_c_rate
-- x capacity, data gaps allowed while resting), one row per (vin, run_id).
--
-- A period continuing from the previous day (run_id 0) starts at the carried
-- rest_start_ms. Its last reading gives the open-circuit voltage (pack voltage / cells)
-- once it has lasted rest_min_s (science.md 6.2); `relax_mv_per_h` is the cell voltage
-- drift over its last 30 min (still relaxing if large). A period still running at the
-- day's last reading is `open_at_day_end`: it continues tomorrow. `mode_before_rest` is
-- the mode before the rest began (charge or discharge sets the LFP hysteresis branch).
CREATE OR REPLACE TEMP TABLE rest_runs AS
WITH rest AS (
    SELECT r.*, max(ts_ms) OVER (PARTITION BY vin, run_id) AS end_ms
    FROM readings r
    WHERE at_rest
),
runs AS (
    SELECT
        vin,
        run_id,
        min(ts_ms) AS first_ms,
        max(ts_ms) AS end_ms,
        count(*) AS n_readings,
        arg_max(seq, ts_ms) AS end_seq,
        arg_max(voltage_v, ts_ms) AS end_voltage_v,
        arg_max(voltage_v, ts_ms) FILTER (WHERE ts_ms <= end_ms - 1800000) AS v_30min_before_v,
        max(ts_ms) FILTER (WHERE ts_ms <= end_ms - 1800000) AS ts_30min_before_ms,
        arg_max(n_cells, ts_ms) AS n_cells,
        arg_max(temp_c_mean, ts_ms) AS end_temp_c,
        arg_max(soc_pct, ts_ms) AS end_bms_soc_pct,
        arg_max(soh_pct, ts_ms) AS end_bms_soh_pct,
        arg_max(q_cum_uah, ts_ms) AS q_cum_uah,
        arg_max(covered_cum_ms, ts_ms) AS covered_cum_ms,
        arg_max(bad_gaps_cum, ts_ms) AS bad_gaps_cum,
        arg_max(prev_mode, ts_ms) FILTER (WHERE ts_ms = min_ts) AS mode_before
    FROM (SELECT *, min(ts_ms) OVER (PARTITION BY vin, run_id) AS min_ts FROM rest)
    GROUP BY vin, run_id
),
day_last AS (SELECT vin, max(ts_ms) AS last_ms FROM readings GROUP BY vin)
SELECT
    runs.*,
    CASE WHEN run_id = 0 THEN coalesce(c.rest_start_ms, first_ms) ELSE first_ms END
        AS start_ms,
    (end_ms - CASE WHEN run_id = 0 THEN coalesce(c.rest_start_ms, first_ms) ELSE first_ms END)
        / 1000.0 AS duration_s,
    1000.0 * (end_voltage_v - v_30min_before_v) / n_cells
        / ((end_ms - ts_30min_before_ms) / 3.6e6) AS relax_mv_per_h,
    end_ms = day_last.last_ms AS open_at_day_end,
    CASE WHEN run_id = 0 THEN c.rest_mode_before ELSE mode_before END AS mode_before_rest
FROM runs
JOIN day_last USING (vin)
LEFT JOIN carry c USING (vin)
ORDER BY vin, run_id;
