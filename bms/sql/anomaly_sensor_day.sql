-- anomaly_sensor_day: one row per (vin, temperature sensor) of one (date, fleet)
-- telemetry partition: what the sensor-fault and thermal rules need and the analytics
-- tables do not carry. Inputs: view `tele` (the partition's files, duplicates possible),
-- table `registry` (vin, capacity_ah); variables dedup (the files may hold duplicate
-- (vin, seq) rows), in_order (they come in (vin, ts, seq) order, each VIN's rows
-- together, read on one thread), rest_c_rate, default_capacity_ah, rest_min_s, settle_s.
--   n_readings, n_valid     readings, and readings with a value (sentinels and
--                           out-of-type values are stored as null, bms.Quality)
--   range_c                 max - min of the sensor's values over the day (0 with a
--                           varying pack = stuck)
--   max_c                   the sensor's highest value of the day (a stuck sensor's value)
--   held_max_c              the highest value it held on two consecutive valid readings
--                           (the lower of the two): a one-reading spike does not count
--   pack_range_c            range over the day of the pack's median sensor
--   dev_mean_c              mean of (sensor - pack median)
--   jitter_c                RMS change between consecutive valid readings
--   rest_rise_c_per_h       steepest least-squares rise of (sensor - pack median) over a
--                           rest of at least rest_min_s, after settle_s
--   pack_rest_rise_c_per_h  the same for the pack median itself (same for all sensors)
-- Every sum is of integers (temperatures in 0.1 degC as sent, the pack median doubled so
-- it stays whole, times in ms from the start of the rest): exact in any order (without
-- in_order the job may run on several threads and still give the same bytes). The rest
-- fit's sums of squared times need HUGEINT; the others stay far inside BIGINT (a
-- SMALLINT value squared, times the readings of a day). The
-- least-squares slope is Sxy' / Sxx' with Sxy' = n Sxy - Sx Sy, Sxx' = n Sxx - Sx^2.
WITH dedup AS (
    SELECT vin, seq, epoch_ms(ts) AS ts_ms, current_a, temp_dc
    FROM tele
    -- variable dedup: the files may hold duplicate (vin, seq) rows (false: the window
    -- is folded away). Ties broken by every column used, so any thread order keeps the
    -- same reading.
    QUALIFY NOT getvariable('dedup') OR row_number() OVER (
        PARTITION BY vin, seq ORDER BY received_at, worker, ts, current_a, temp_dc
    ) = 1
),
ordered AS (
    -- Each reading's number in (vin, ts, seq) order and its vehicle's previous reading
    -- (the steps). Variable in_order: the rows come in that order, each VIN's together
    -- (a compacted partition, read on one thread), so one pass in file order numbers
    -- them (the empty OVER (), no sort; numbers rise by VIN, not from 1 in each);
    -- false: a sort. The folded CASE keeps one of the two. Done before any join: a hash
    -- join need not keep the order of its rows.
    SELECT *,
           CASE WHEN getvariable('in_order') THEN row_number() OVER ()
                ELSE row_number() OVER w END AS rn,
           CASE WHEN getvariable('in_order')
                THEN CASE WHEN lag(vin) OVER () = vin THEN lag(temp_dc) OVER () END
                ELSE lag(temp_dc) OVER w END AS prev_dc
    FROM dedup
    WINDOW w AS (PARTITION BY vin ORDER BY ts_ms, seq)
),
flagged AS (
    SELECT
        d.*,
        abs(d.current_a) <= getvariable('rest_c_rate')
            * coalesce(r.capacity_ah, getvariable('default_capacity_ah')) AS at_rest,
        -- twice the median of the sensors [0.05 degC]: whole (a median of integers is
        -- one of them or halfway between two)
        (2 * list_median(d.temp_dc))::BIGINT AS pack2
    FROM ordered d
    LEFT JOIN registry r USING (vin)
),
rest AS (
    -- The readings at rest, each with the run of consecutive readings at rest it
    -- belongs to: its number minus its rank among its vehicle's readings at rest is
    -- constant along a run and rises from one run to the next.
    SELECT vin, ts_ms, pack2, temp_dc,
           rn - row_number() OVER (PARTITION BY vin ORDER BY rn) AS run_id
    FROM flagged
    WHERE at_rest
),
pack AS (
    SELECT vin, count(*) AS n_readings, (max(pack2) - min(pack2)) / 20.0 AS pack_range_c
    FROM flagged GROUP BY vin
),
stats AS (
    -- A stuck sensor reads one value all day: min = max. The step sums serve a sensor
    -- with a value in every reading of its vehicle (nearly all): its previous value is
    -- the previous reading's (that list cut to this reading's sensors). Summed as
    -- DOUBLE (cheaper than BIGINT's HUGEINT sums) and still exact: every term and
    -- partial sum is whole and below 2^53 (a squared step below 2^32, times the readings
    -- of a day).
    SELECT vin, sensor, count(*) AS n_readings, count(temp_dc) AS n_valid,
           ((max(temp_dc) - min(temp_dc)) / 10.0)::DOUBLE AS range_c,
           (max(temp_dc) / 10.0)::DOUBLE AS max_c,
           sum(2 * temp_dc - pack2)::DOUBLE
               / count(2 * temp_dc - pack2) / 20.0 AS dev_mean_c,
           sqrt(sum((temp_dc - prev_dc) * (temp_dc - prev_dc))::DOUBLE
               / count(temp_dc - prev_dc)) / 10.0 AS steps_jitter_c,
           -- least() skips a NULL: both readings must have a value
           (max(CASE WHEN temp_dc IS NOT NULL AND prev_dc IS NOT NULL
                     THEN least(temp_dc, prev_dc) END) / 10.0)::DOUBLE AS steps_held_max_c
    FROM (
        SELECT vin, pack2,
               unnest(range(len(temp_dc)))::SMALLINT AS sensor,
               unnest(temp_dc)::DOUBLE AS temp_dc,
               unnest(prev_dc[1:len(temp_dc)])::DOUBLE AS prev_dc
        FROM flagged
    )
    GROUP BY vin, sensor
),
-- A sensor with gaps steps from its previous valid value instead: a window over its own
-- readings, for the few gappy sensors only.
gappy AS (
    SELECT stats.vin, stats.sensor
    FROM stats JOIN pack USING (vin)
    WHERE stats.n_valid < pack.n_readings
),
gappy_jit AS (
    SELECT vin, sensor,
           sqrt(sum(step_dc * step_dc)::DOUBLE / count(step_dc)) / 10.0 AS jitter_c,
           (max(CASE WHEN step_dc IS NOT NULL THEN least(temp_dc, temp_dc - step_dc) END)
               / 10.0)::DOUBLE AS held_max_c
    FROM (
        SELECT vin, sensor, temp_dc,
               temp_dc - lag(temp_dc) OVER (PARTITION BY vin, sensor ORDER BY ts_ms, seq)
                   AS step_dc
        FROM (
            SELECT vin, seq, ts_ms, unnest(range(len(temp_dc)))::SMALLINT AS sensor,
                   unnest(temp_dc)::BIGINT AS temp_dc
            FROM flagged
            WHERE vin IN (SELECT vin FROM gappy)
        ) g
        SEMI JOIN gappy USING (vin, sensor)
        WHERE temp_dc IS NOT NULL
    )
    GROUP BY vin, sensor
),
rest_runs AS (
    -- rest runs of at least rest_min_s from their first to their last reading
    SELECT vin, run_id, min(ts_ms) AS run_start_ms
    FROM rest
    GROUP BY vin, run_id
    HAVING max(ts_ms) - min(ts_ms) >= 1000 * getvariable('rest_min_s')
),
rest_pts AS (
    SELECT vin, sensor, run_id, run_start_ms,
           (ts_ms - run_start_ms)::HUGEINT AS x,
           (2 * temp_dc - pack2)::HUGEINT AS y,
           pack2::HUGEINT AS p
    FROM (
        SELECT l.vin, l.run_id, r.run_start_ms, l.ts_ms, l.pack2,
               unnest(range(len(l.temp_dc)))::SMALLINT AS sensor,
               unnest(l.temp_dc)::BIGINT AS temp_dc
        FROM rest l
        JOIN rest_runs r USING (vin, run_id)
        WHERE l.pack2 IS NOT NULL
            AND l.ts_ms >= r.run_start_ms + 1000 * getvariable('settle_s')
    )
    WHERE temp_dc IS NOT NULL
),
rest_sums AS (
    SELECT vin, sensor, run_id, any_value(run_start_ms) AS run_start_ms,
           count(*)::HUGEINT AS n,
           sum(x) AS sx, sum(x * x) AS sxx, sum(y) AS sy, sum(x * y) AS sxy,
           sum(p) AS sp, sum(x * p) AS sxp
    FROM rest_pts
    GROUP BY vin, sensor, run_id
    HAVING count(*) >= 4
),
rest_slopes AS (
    -- [0.05 degC per ms] x 3.6e6 ms/h / 20 = degC/h
    SELECT vin, sensor, run_id,
           CASE WHEN n * sxx - sx * sx = 0 THEN 'NaN'::DOUBLE
                ELSE (n * sxy - sx * sy)::DOUBLE / (n * sxx - sx * sx)::DOUBLE * 180000.0
           END AS rel_slope,
           CASE WHEN n * sxx - sx * sx = 0 THEN 'NaN'::DOUBLE
                ELSE (n * sxp - sx * sp)::DOUBLE / (n * sxx - sx * sx)::DOUBLE * 180000.0
           END AS pack_slope
    FROM rest_sums
),
rest_max AS (
    SELECT vin, sensor, max(rel_slope) AS rest_rise_c_per_h,
           max(pack_slope) AS pack_rest_rise_c_per_h
    FROM rest_slopes GROUP BY vin, sensor
)
SELECT
    stats.vin,
    stats.sensor,
    stats.n_readings,
    stats.n_valid,
    stats.range_c,
    stats.max_c,
    pack.pack_range_c,
    stats.dev_mean_c,
    CASE WHEN gappy.sensor IS NULL THEN stats.steps_jitter_c ELSE gappy_jit.jitter_c END
        AS jitter_c,
    CASE WHEN gappy.sensor IS NULL THEN stats.steps_held_max_c ELSE gappy_jit.held_max_c END
        AS held_max_c,
    rest_max.rest_rise_c_per_h,
    rest_max.pack_rest_rise_c_per_h
FROM stats
JOIN pack USING (vin)
LEFT JOIN gappy USING (vin, sensor)
LEFT JOIN gappy_jit USING (vin, sensor)
LEFT JOIN rest_max USING (vin, sensor)
ORDER BY stats.vin, stats.sensor;
