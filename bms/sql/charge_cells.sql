-- charge_cells: the readings chosen by charge_select.sql with what the charge-step fit
-- needs: charge counted (the same day counters as the rest points), current, mean
-- temperature, the BMS's SoC (a hint where a charge that starts inside the step began,
-- bms._chargestep), when the run began charging (and its current step, see
-- charge_select) and the cell voltages [mV], in time order per charge run.
SELECT
    r.vin, r.day_n, r.run_id, r.seq, r.ts_ms, r.current_a, r.q_cum_uah, r.covered_cum_ms,
    r.bad_gaps_cum, r.temp_c_mean, r.soc_pct, s.start_ms, s.start_step_as, c.cell_mv
FROM charge_select s
JOIN readings r USING (vin, day_n, seq)
JOIN cell_rows c ON c.vin = s.vin AND c.seq = s.seq
ORDER BY r.day_n, r.vin, r.ts_ms, r.seq;
