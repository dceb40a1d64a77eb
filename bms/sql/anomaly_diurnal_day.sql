-- anomaly_diurnal_day: per vin of one (date, fleet) telemetry partition, the sums of a
-- least-squares fit of the pack temperature at rest against the time of day,
-- T = a + b cos(w t) + c sin(w t), w = 2 pi / 24 h: a parked pack follows the daily
-- ambient cycle like a first-order low-pass of time constant tau = C / h (heat capacity
-- over conductance to ambient), lagging it by atan(w tau) / w. A pack whose cooling
-- degrades (tau grows) lags its peers more. Inputs: view `tele` (the partition's files,
-- duplicates possible), table `registry` (vin, capacity_ah); variables dedup (the files
-- may hold duplicate (vin, seq) rows; false folds the window away), rest_c_rate,
-- default_capacity_ah.
--   n                    readings at rest with a pack temperature
--   sc, ss, scc, sss, scs, st, stc, sts   sums of c, s, c^2, s^2, c s, T, T c, T s with
--                        c, s the cosine and sine of the UTC time of day in millionths and
--                        T twice the median of the sensors [0.05 degC]
-- Every sum is of whole numbers in HUGEINT: exact in any order (the job may run on
-- several threads and give the same bytes); each stays below 2^53 for a day of readings
-- (1e4^2 x 86,400), so it is exact as a DOUBLE too.
WITH dedup AS (
    SELECT vin, seq, ts, current_a, temp_dc
    FROM tele
    QUALIFY NOT getvariable('dedup') OR row_number() OVER (
        PARTITION BY vin, seq ORDER BY received_at, worker, ts, current_a, temp_dc
    ) = 1
),
rest AS (
    SELECT d.vin, d.ts, (2 * list_median(d.temp_dc))::BIGINT AS t
    FROM dedup d
    LEFT JOIN registry r USING (vin)
    WHERE abs(d.current_a) <= getvariable('rest_c_rate')
        * coalesce(r.capacity_ah, getvariable('default_capacity_ah'))
),
pts AS (
    -- the readings at rest with a sensor value (a median) count; the others are left
    -- out of every sum by a null time of day rather than by a filter (a filter on the
    -- median would be pushed below the rest filter, onto every reading)
    SELECT
        vin,
        t,
        CASE WHEN t IS NOT NULL THEN round(
            1e4 * cos(2 * pi() * (epoch_ms(ts) % 86400000) / 86400000.0))::BIGINT END AS c,
        CASE WHEN t IS NOT NULL THEN round(
            1e4 * sin(2 * pi() * (epoch_ms(ts) % 86400000) / 86400000.0))::BIGINT END AS s
    FROM rest
)
SELECT
    vin,
    count(t)::DOUBLE AS n,
    sum(c::HUGEINT)::DOUBLE AS sc,
    sum(s::HUGEINT)::DOUBLE AS ss,
    sum(c::HUGEINT * c)::DOUBLE AS scc,
    sum(s::HUGEINT * s)::DOUBLE AS sss,
    sum(c::HUGEINT * s)::DOUBLE AS scs,
    sum(t::HUGEINT)::DOUBLE AS st,
    sum(t::HUGEINT * c)::DOUBLE AS stc,
    sum(t::HUGEINT * s)::DOUBLE AS sts
FROM pts
GROUP BY vin
HAVING count(t) > 0
ORDER BY vin;
