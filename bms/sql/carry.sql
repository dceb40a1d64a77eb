-- carry: what each vehicle hands to the next day (bms._analytics keeps it under
-- state/analytics/carry/): its last reading (the next day's first interval starts
-- there), whether it is still resting and since when, and the day's totals of the
-- exact charge counter, counted time and charge-breaking gaps.
SELECT
    r.vin,
    max(r.ts_ms) AS last_ts_ms,
    arg_max(r.current_a, r.ts_ms) AS last_current_a,
    arg_max(r.voltage_v, r.ts_ms) AS last_voltage_v,
    arg_max(r.soc_pct, r.ts_ms) AS last_soc_pct,
    arg_max(r.temp_c_max, r.ts_ms) AS last_temp_c_max,
    arg_max(r.mode, r.ts_ms) AS last_mode,
    arg_max(r.odometer_km, r.ts_ms) AS last_odometer_km,
    arg_max(r.at_rest, r.ts_ms) AS last_at_rest,
    arg_max(r.run_id, r.ts_ms) AS last_run_id,
    min(r.ts_ms) AS first_ts_ms,
    arg_min(r.odometer_km, r.ts_ms) AS first_odometer_km,
    sum(r.dq_uah) AS q_day_uah,
    sum(r.dt_ms) AS covered_day_ms,
    sum(r.bad_gap::INTEGER) AS bad_gaps_day
FROM readings r
GROUP BY r.vin
ORDER BY r.vin;
