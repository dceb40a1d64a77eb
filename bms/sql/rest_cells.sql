-- rest_cells: the cell voltages [mV] at the end of each rest long enough for an OCV
-- point (rest_min_s, or rest_relax_min_s with its relaxation extrapolated), for
-- per-cell states of charge (the pack's capacity is its weakest cell's).
SELECT rr.vin, rr.day_n, rr.run_id, c.cell_mv
FROM rest_runs rr
JOIN cell_rows c ON c.vin = rr.vin AND c.seq = rr.end_seq
WHERE rr.duration_s >= getvariable('rest_relax_min_s') AND NOT rr.open_at_day_end
ORDER BY rr.day_n, rr.vin, rr.run_id;
