-- carry: what each vehicle hands to the next day (bms._analytics keeps it under
-- state/analytics/carry/), per (vin, day_n): its last reading (the next day's first
-- interval starts there), whether it is still resting, and the day's totals of the
-- exact charge counter, counted time and charge-breaking gaps.
SELECT
    r.vin,
    r.day_n,
    max(r.ts_ms) AS last_ts_ms,
    arg_max(r.current_a, r.rn) AS last_current_a,
    arg_max(r.voltage_v, r.rn) AS last_voltage_v,
    arg_max(r.soc_pct, r.rn) AS last_soc_pct,
    arg_max(r.temp_c_max, r.rn) AS last_temp_c_max,
    arg_max(r.mode, r.rn) AS last_mode,
    arg_max(r.odometer_km, r.rn) AS last_odometer_km,
    arg_max(r.at_rest, r.rn) AS last_at_rest,
    arg_max(r.run_id, r.rn) AS last_run_id,
    min(r.ts_ms) AS first_ts_ms,
    arg_min(r.odometer_km, r.rn) AS first_odometer_km,
    sum(r.dq_uah) AS q_day_uah,
    sum(r.dt_ms) AS covered_day_ms,
    sum(r.bad_gap::INTEGER) AS bad_gaps_day
FROM readings r
GROUP BY r.vin, r.day_n
ORDER BY r.day_n, r.vin;
