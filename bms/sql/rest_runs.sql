-- rest_runs: the rest periods of each day (consecutive readings with |current| <=
-- rest_c_rate x capacity, data gaps allowed while resting), one row per
-- (vin, day_n, run_id).
--
-- A period continuing from the previous day (run_id 0) starts where it began: within
-- the unit at the first reading of its unit-wide run `grun`, before the unit at the
-- carried rest_start_ms. Its last reading gives the open-circuit voltage (pack voltage
-- / cells) once it has lasted rest_min_s (science.md 6.2); `relax_mv_per_h` is the cell
-- voltage drift over its last 30 min (still relaxing if large). A period still running
-- at the day's last reading is `open_at_day_end`: it continues the next day.
-- `mode_before_rest` is the mode before the rest began (charge or discharge sets the
-- LFP hysteresis branch); `start_q_cum_uah` the day's charge count at its first reading
-- (with branch_turns.sql: how far the branch had moved).
CREATE OR REPLACE TEMP TABLE rest_runs AS
WITH rest_rows AS (
    SELECT
        vin, day_n, run_id, grun, ts_ms, rn, seq, voltage_v, n_cells, temp_c_mean,
        soc_pct, soh_pct, q_cum_uah, covered_cum_ms, bad_gaps_cum, prev_mode
    FROM readings
    WHERE at_rest
),
rest AS (
    -- each rest reading with its run's end: a hash aggregate joined back. A window
    -- partitioned by run sorted every rest reading (0.07 s per 400,000 readings) and
    -- left the jobs after it slower too: the benchmark fleet-day's readings jobs took
    -- 23.7-24.1 s CPU on one thread with it, 22.0-22.2 s without.
    SELECT r.*, e.end_ms
    FROM rest_rows r
    JOIN (SELECT vin, day_n, run_id, max(ts_ms) AS end_ms FROM rest_rows GROUP BY ALL) e
        USING (vin, day_n, run_id)
),
grun_info AS (
    -- a rest that spans midnight: when it began and the mode before it
    SELECT
        vin,
        grun,
        min(ts_ms) AS grun_start_ms,
        arg_min(prev_mode, rn) AS grun_mode_before
    FROM rest
    GROUP BY vin, grun
),
runs AS (
    SELECT
        vin,
        day_n,
        run_id,
        any_value(grun) AS grun,
        min(ts_ms) AS first_ms,
        max(ts_ms) AS end_ms,
        count(*) AS n_readings,
        arg_max(seq, rn) AS end_seq,
        arg_max(voltage_v, rn) AS end_voltage_v,
        arg_max(voltage_v, rn) FILTER (WHERE ts_ms <= end_ms - 1800000) AS v_30min_before_v,
        max(ts_ms) FILTER (WHERE ts_ms <= end_ms - 1800000) AS ts_30min_before_ms,
        arg_max(n_cells, rn) AS n_cells,
        arg_max(temp_c_mean, rn) AS end_temp_c,
        arg_max(soc_pct, rn) AS end_bms_soc_pct,
        arg_max(soh_pct, rn) AS end_bms_soh_pct,
        arg_max(q_cum_uah, rn) AS q_cum_uah,
        arg_min(q_cum_uah, rn) AS start_q_cum_uah,
        arg_max(covered_cum_ms, rn) AS covered_cum_ms,
        arg_max(bad_gaps_cum, rn) AS bad_gaps_cum,
        arg_min(prev_mode, rn) AS mode_before
    FROM rest
    GROUP BY vin, day_n, run_id
),
day_last AS (SELECT vin, day_n, max(ts_ms) AS last_ms FROM readings GROUP BY vin, day_n),
started AS (
    SELECT
        runs.*,
        g.grun_start_ms,
        g.grun_mode_before,
        CASE
            WHEN run_id > 0 THEN first_ms
            WHEN grun > 0 THEN grun_start_ms
            ELSE coalesce(c.rest_start_ms, first_ms)
        END AS start_ms,
        CASE
            WHEN run_id > 0 THEN mode_before
            WHEN grun > 0 THEN grun_mode_before
            ELSE c.rest_mode_before
        END AS mode_before_rest
    FROM runs
    JOIN grun_info g USING (vin, grun)
    LEFT JOIN carry c USING (vin)
)
SELECT
    s.* EXCLUDE (grun, grun_start_ms, grun_mode_before, mode_before_rest),
    (end_ms - start_ms) / 1000.0 AS duration_s,
    1000.0 * (end_voltage_v - v_30min_before_v) / n_cells
        / ((end_ms - ts_30min_before_ms) / 3.6e6) AS relax_mv_per_h,
    end_ms = day_last.last_ms AS open_at_day_end,
    mode_before_rest
FROM started s
JOIN day_last USING (vin, day_n)
ORDER BY day_n, vin, run_id;
