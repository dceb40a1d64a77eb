-- relax_select: the readings of each rest too short for an OCV point (rest_min_s) but
-- long enough to extrapolate its relaxation (rest_relax_min_s), with their time since
-- the rest began [s]; cell_rows.sql fetches their cell lists and rest_relax.sql turns
-- them into one voltage curve per rest (bms._relax). Rests still open at the day's end
-- go on tomorrow (they are judged when they end). One reading per 5 min, counted back
-- from the rest's end (so its last reading, the one rest_cells.sql reads, is kept): the
-- fit needs a dozen points an hour, and at a 10 s cadence every reading sent ~360 cell
-- lists per rest to cell_rows (the nightly benchmark's analytics stage +15-25 %).
-- Inputs: readings, rest_runs.
SELECT r.vin, r.day_n, r.run_id, r.seq, (r.ts_ms - rr.start_ms) / 1000.0 AS t_s
FROM readings r
JOIN rest_runs rr USING (vin, day_n, run_id)
WHERE r.at_rest
    AND NOT rr.open_at_day_end
    AND rr.duration_s >= getvariable('rest_relax_min_s')
    AND rr.duration_s < getvariable('rest_min_s')
QUALIFY row_number() OVER (
    PARTITION BY r.vin, r.day_n, r.run_id, (rr.end_ms - r.ts_ms) // 300000
    ORDER BY r.ts_ms DESC, r.seq DESC
) = 1
ORDER BY r.day_n, r.vin, r.run_id, r.seq;
