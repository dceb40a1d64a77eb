-- resistance_steps: current steps out of rest (start of a drive or a charge) for
-- R = dV / dI (science.md 3): the two readings before are at rest (so the voltage before
-- is relaxed), the one after carries at least step_min_c_rate x capacity, it follows
-- at most step_max_delay_s later (the interval is reported as delay_s), and the SoC lies
-- in the reference band [step_soc_min_pct, step_soc_max_pct]. One row per step; the
-- cells' voltage steps of the same (prev_seq, seq) pairs come from step_cells.sql.
CREATE OR REPLACE TEMP TABLE resistance_steps AS
SELECT
    vin,
    day_n,
    chemistry,
    c_ah,
    prev_seq,
    seq,
    ts_ms,
    dt_s AS delay_s,
    voltage_v - prev_voltage_v AS delta_v,
    current_a - prev_current_a AS delta_a,
    temp_c_mean AS temp_c,
    soc_pct,
    mode
FROM readings
WHERE coalesce(prev_at_rest, FALSE)
    AND coalesce(prev2_at_rest, FALSE)
    AND NOT at_rest
    AND NOT gap
    AND prev_seq IS NOT NULL
    AND dt_s <= getvariable('step_max_delay_s')
    AND abs(current_a - prev_current_a) >= getvariable('step_min_c_rate') * c_ah
    AND soc_pct BETWEEN getvariable('step_soc_min_pct') AND getvariable('step_soc_max_pct')
    AND temp_c_mean IS NOT NULL
ORDER BY day_n, vin, ts_ms;
