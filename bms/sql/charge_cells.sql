-- charge_cells: the readings chosen by charge_select.sql with what the charge-step fit
-- needs: charge counted (the same day counters as the rest points), current, mean
-- temperature, the BMS's SoC (a hint where a charge that starts inside the step began,
-- bms._chargestep), when the run began charging (and its current step, see
-- charge_select) and the cell voltages [mV], in time order per charge run.
SELECT
    s.vin, s.day_n, s.run_id, s.seq, s.ts_ms, s.current_a, s.q_cum_uah, s.covered_cum_ms,
    s.bad_gaps_cum, s.temp_c_mean, s.soc_pct, s.start_ms, s.start_step_as, c.cell_mv
FROM charge_select s
JOIN cell_rows c ON c.vin = s.vin AND c.seq = s.seq
ORDER BY s.day_n, s.vin, s.ts_ms, s.seq;
