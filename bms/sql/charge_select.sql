-- charge_select: charging readings of LFP vehicles that may cross the 70-82 % step of
-- the OCV curve, for SoC anchors without a rest (bms._chargestep). Readings charging at
-- at least charge_step_c_rate x capacity whose BMS SoC lies in
-- [charge_step_soc_min_pct, charge_step_soc_max_pct] are taken: the BMS SoC only
-- narrows the selection (their cell lists are read by cell_rows.sql); the SoC itself
-- comes from the shape of the cell voltages against the charge counted.
-- `start_ms` is the run's first charging reading (the polarisation settles from there);
-- `start_step_as` the current step into it times its interval [A s]: when within that
-- interval the current changed is unknown, so the charge counted to any later reading
-- is uncertain by up to that much.
-- Input: readings. One row per reading, grouped in charge runs (vin, day_n, run_id), with
-- the readings' values charge_cells.sql hands on (it runs after the readings table of
-- the vehicle group is gone, see cell_rows.sql).
WITH charging AS (
    SELECT vin, day_n, run_id, seq, ts_ms, soc_pct, current_a, q_cum_uah, covered_cum_ms,
        bad_gaps_cum, temp_c_mean,
        abs(current_a - coalesce(prev_current_a, 0.0)) * coalesce(dt_s, 0.0) AS step_as,
        ts_ms // (1000 * getvariable('charge_step_every_s'))::BIGINT AS period,
        prev_ts_ms // (1000 * getvariable('charge_step_every_s'))::BIGINT AS prev_period
    FROM readings
    WHERE chemistry = 'lfp'
        AND mode IN ('ac_charge', 'dc_charge')
        AND current_a >= getvariable('charge_step_c_rate') * c_ah
),
starts AS (
    SELECT vin, day_n, run_id, min(ts_ms) AS start_ms, arg_min(step_as, ts_ms) AS start_step_as
    FROM charging
    GROUP BY vin, day_n, run_id
)
SELECT
    c.vin, c.day_n, c.run_id, c.seq, c.ts_ms, c.current_a, c.q_cum_uah, c.covered_cum_ms,
    c.bad_gaps_cum, c.temp_c_mean, c.soc_pct, s.start_ms, s.start_step_as
FROM charging c
JOIN starts s USING (vin, day_n, run_id)
WHERE c.soc_pct BETWEEN getvariable('charge_step_soc_min_pct')
    AND getvariable('charge_step_soc_max_pct')
    -- at most one reading per charge_step_every_s (the first of each period): a finer
    -- cadence adds cell lists to read, not precision (the fit bins by 0.25 % of charge)
    AND c.period IS DISTINCT FROM c.prev_period;
