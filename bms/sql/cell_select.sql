-- cell_select: the few readings whose cell lists cell_day.sql reads, with their role
-- (per vehicle and day_n):
--   rest_end    last reading of a rest of at least cell_rest_min_s (grp = run_id)
--   rest_start  first reading settle_s after a rest's first reading today, if at least
--               self_discharge_min_s of the rest remain (grp = run_id; span_ms to its end)
--   load        the (at most 64) heaviest readings discharging at least load_c_rate x
--               capacity (the strongest sag signal; bounds the cost)
--   step_pre / step_post  the two readings of each resistance step (grp = step's seq)
-- Inputs: readings, rest_runs, steps (resistance_steps plus temp_factor from Python).
SELECT vin, day_n, end_seq AS seq, 'rest_end' AS role, run_id AS grp,
       NULL::DOUBLE AS delta_a, NULL::DOUBLE AS temp_factor, NULL::BIGINT AS span_ms
FROM rest_runs
WHERE duration_s >= getvariable('cell_rest_min_s')
UNION ALL
SELECT r.vin, r.day_n, arg_min(r.seq, r.rn), 'rest_start', r.run_id, NULL, NULL,
       rr.end_ms - min(r.ts_ms)
FROM readings r
JOIN rest_runs rr USING (vin, day_n, run_id)
WHERE r.at_rest AND r.ts_ms >= rr.first_ms + 1000 * getvariable('settle_s')
GROUP BY r.vin, r.day_n, r.run_id, rr.end_ms
HAVING rr.end_ms - min(r.ts_ms) >= 1000 * getvariable('self_discharge_min_s')
UNION ALL
SELECT vin, day_n, seq, 'load', 0, current_a, NULL, NULL
FROM readings
WHERE current_a <= -getvariable('load_c_rate') * c_ah
QUALIFY row_number() OVER (PARTITION BY vin, day_n ORDER BY current_a, seq) <= 64
UNION ALL
SELECT vin, day_n, prev_seq, 'step_pre', seq, delta_a, temp_factor, NULL FROM steps
UNION ALL
SELECT vin, day_n, seq, 'step_post', seq, delta_a, temp_factor, NULL FROM steps;
