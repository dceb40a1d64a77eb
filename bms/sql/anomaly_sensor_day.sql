-- anomaly_sensor_day: one row per (vin, temperature sensor) of one (date, fleet)
-- telemetry partition: what the sensor-fault and thermal rules need and the analytics
-- tables do not carry. Inputs: view `tele` (the partition's files, duplicates possible),
-- table `registry` (vin, capacity_ah); variables rest_c_rate, default_capacity_ah,
-- rest_min_s, settle_s.
--   n_readings, n_valid     readings, and readings with a value (sentinels and
--                           out-of-type values are stored as null, bms.Quality)
--   n_distinct              distinct values (1 with a varying pack = stuck)
--   pack_range_c            range over the day of the pack's median sensor
--   dev_mean_c              mean of (sensor - pack median)
--   jitter_c                RMS change between consecutive valid readings
--   rest_rise_c_per_h       steepest least-squares rise of (sensor - pack median) over a
--                           rest of at least rest_min_s, after settle_s
--   pack_rest_rise_c_per_h  the same for the pack median itself (same for all sensors)
WITH dedup AS (
    SELECT vin, seq, epoch_ms(ts) AS ts_ms, current_a, temp_dc
    FROM tele
    QUALIFY row_number() OVER (PARTITION BY vin, seq ORDER BY received_at, worker) = 1
),
flagged AS (
    SELECT
        d.*,
        abs(d.current_a) <= getvariable('rest_c_rate')
            * coalesce(r.capacity_ah, getvariable('default_capacity_ah')) AS at_rest,
        list_median(d.temp_dc) / 10.0 AS pack_c
    FROM dedup d
    LEFT JOIN registry r USING (vin)
),
runs AS (
    SELECT
        *,
        sum(CASE WHEN at_rest IS DISTINCT FROM prev_rest THEN 1 ELSE 0 END)
            OVER (PARTITION BY vin ORDER BY ts_ms, seq ROWS UNBOUNDED PRECEDING) AS run_id
    FROM (SELECT *, lag(at_rest) OVER (PARTITION BY vin ORDER BY ts_ms, seq) AS prev_rest
          FROM flagged)
),
runs_t AS (
    SELECT *, min(ts_ms) OVER (PARTITION BY vin, run_id) AS run_start_ms,
           max(ts_ms) OVER (PARTITION BY vin, run_id) AS run_end_ms
    FROM runs
),
s AS (
    SELECT
        vin, seq, ts_ms, at_rest, run_id, run_start_ms, run_end_ms, pack_c,
        unnest(range(len(temp_dc)))::SMALLINT AS sensor,
        unnest(temp_dc) / 10.0 AS temp_c
    FROM runs_t
),
j AS (
    SELECT *, temp_c - lag(temp_c) OVER (PARTITION BY vin, sensor ORDER BY ts_ms, seq) AS step_c
    FROM s WHERE temp_c IS NOT NULL
),
rest_slopes AS (
    SELECT vin, sensor, run_id,
           regr_slope(temp_c - pack_c, ts_ms / 3.6e6) AS rel_slope,
           regr_slope(pack_c, ts_ms / 3.6e6) AS pack_slope
    FROM s
    WHERE at_rest AND temp_c IS NOT NULL AND pack_c IS NOT NULL
        AND run_end_ms - run_start_ms >= 1000 * getvariable('rest_min_s')
        AND ts_ms >= run_start_ms + 1000 * getvariable('settle_s')
    GROUP BY vin, sensor, run_id
    HAVING count(*) >= 4
),
rest_max AS (
    SELECT vin, sensor, max(rel_slope) AS rest_rise_c_per_h,
           max(pack_slope) AS pack_rest_rise_c_per_h
    FROM rest_slopes GROUP BY vin, sensor
),
stats AS (
    SELECT vin, sensor, count(*) AS n_readings, count(temp_c) AS n_valid,
           count(DISTINCT temp_c) AS n_distinct, avg(temp_c - pack_c) AS dev_mean_c
    FROM s GROUP BY vin, sensor
),
jit AS (SELECT vin, sensor, sqrt(avg(step_c * step_c)) AS jitter_c FROM j GROUP BY vin, sensor),
pack AS (SELECT vin, max(pack_c) - min(pack_c) AS pack_range_c FROM flagged GROUP BY vin)
SELECT
    stats.vin,
    stats.sensor,
    stats.n_readings,
    stats.n_valid,
    stats.n_distinct,
    pack.pack_range_c,
    stats.dev_mean_c,
    jit.jitter_c,
    rest_max.rest_rise_c_per_h,
    rest_max.pack_rest_rise_c_per_h
FROM stats
JOIN pack USING (vin)
LEFT JOIN jit USING (vin, sensor)
LEFT JOIN rest_max USING (vin, sensor)
ORDER BY stats.vin, stats.sensor;
