-- readings: the deduplicated readings of one or more consecutive dates of a fleet (a
-- "unit"), in time order, with what each interval since the previous reading
-- contributes.
--
-- Inputs (registered by bms._analytics): view `tele` = the unit's Parquet files
-- (several small files and duplicate (vin, seq) rows before nightly compaction),
-- tables `registry` (vin, chemistry, capacity_ah, n_cells, ...) and `carry` (each
-- vehicle's last reading before the unit's first date). Variables: rest_c_rate,
-- max_gap_s, default_capacity_ah.
--
-- The interval (previous reading, this reading] belongs to this reading; the first
-- reading of the unit continues from the carried last reading, later ones from the
-- reading before, so charge counts and rest periods run across midnight. A reading's
-- current and voltage hold until the next reading (sample and hold: a BMS reports the
-- value it then keeps; Plett 2015 ch. 3 for coulomb counting). Charge [uAh] and energy
-- [mWh] are integers so that sums are exact whatever the thread order.
--
-- Every per-day figure is computed per (vin, day_n) (day_n = UTC day number), so a
-- date gives the same results whether it is computed alone (from the carry) or inside
-- a unit of several dates: the day's first reading has no `prev_seq` and takes its
-- previous reading as the one two back (as when only the carry is known), counters and
-- run ids restart every day. `grun` numbers the vehicle's runs across the whole unit
-- (0 = the run that continues from before the unit) so a rest that spans midnight keeps
-- its start.
CREATE OR REPLACE TEMP TABLE readings AS
WITH dedup AS (
    SELECT
        vin, seq, epoch_ms(ts) AS ts_ms, epoch_ms(ts) // 86400000 AS day_n,
        current_a::DOUBLE AS current_a, voltage_v::DOUBLE AS voltage_v,
        soc_pct::DOUBLE AS soc_pct, soh_pct::DOUBLE AS soh_pct, cycle_count, odometer_km,
        mode, n_cells, cell_min_idx, cell_max_idx,
        temp_c_min::DOUBLE AS temp_c_min, temp_c_max::DOUBLE AS temp_c_max,
        temp_c_mean::DOUBLE AS temp_c_mean, quality
    FROM tele
    -- variable dedup: the unit has duplicates (false: the window is folded away)
    QUALIFY NOT getvariable('dedup')
        OR row_number() OVER (PARTITION BY vin, seq ORDER BY received_at, worker) = 1
),
lagged_raw AS (
    -- the window carries only the reading's own columns (a window sorts every column
    -- it carries); the registry and the carried last reading are joined after it
    SELECT
        d.*,
        row_number() OVER w AS rn,
        lag(day_n) OVER w IS DISTINCT FROM day_n AS day_first,
        lag(seq) OVER w AS lag_seq,
        lag(ts_ms) OVER w AS l_ts_ms,
        lag(current_a) OVER w AS l_current_a,
        lag(voltage_v) OVER w AS l_voltage_v,
        lag(soc_pct) OVER w AS l_soc_pct,
        lag(temp_c_max) OVER w AS l_temp_c_max,
        lag(mode) OVER w AS l_mode,
        lag(odometer_km) OVER w AS l_odometer_km,
        lag(current_a, 2) OVER w AS l2_current_a
    FROM dedup d
    WINDOW w AS (PARTITION BY d.vin ORDER BY d.ts_ms, d.seq)
),
lagged AS (
    -- before the unit's first reading (rn = 1; two back: rn <= 2) the carried one
    SELECT
        l.* EXCLUDE (
            rn, day_first, lag_seq, l_ts_ms, l_current_a, l_voltage_v, l_soc_pct,
            l_temp_c_max, l_mode, l_odometer_km, l2_current_a
        ),
        reg.chemistry,
        reg.capacity_ah AS rated_capacity_ah,
        coalesce(reg.capacity_ah, getvariable('default_capacity_ah')) AS c_ah,
        l.rn,
        l.day_first,
        l.lag_seq,
        CASE WHEN l.rn = 1 THEN c.last_ts_ms ELSE l.l_ts_ms END AS prev_ts_ms,
        CASE WHEN l.rn = 1 THEN c.last_current_a ELSE l.l_current_a END AS prev_current_a,
        CASE WHEN l.rn = 1 THEN c.last_voltage_v ELSE l.l_voltage_v END AS prev_voltage_v,
        CASE WHEN l.rn = 1 THEN c.last_soc_pct ELSE l.l_soc_pct END AS prev_soc_pct,
        CASE WHEN l.rn = 1 THEN c.last_temp_c_max ELSE l.l_temp_c_max END AS prev_temp_c_max,
        CASE WHEN l.rn = 1 THEN c.last_mode ELSE l.l_mode END AS prev_mode,
        CASE WHEN l.rn = 1 THEN c.last_odometer_km ELSE l.l_odometer_km END
            AS prev_odometer_km,
        CASE WHEN l.rn <= 2 THEN c.last_current_a ELSE l.l2_current_a END AS lag2_current_a
    FROM lagged_raw l
    LEFT JOIN registry reg USING (vin)
    LEFT JOIN carry c USING (vin)
),
intervals AS (
    SELECT
        * EXCLUDE (lag_seq, lag2_current_a),
        CASE WHEN day_first THEN NULL ELSE lag_seq END AS prev_seq,
        -- two readings back; for the day's first reading the carried one (the reading
        -- before, as a date computed alone knows only that one)
        CASE WHEN day_first THEN prev_current_a ELSE lag2_current_a END AS prev2_current_a,
        (ts_ms - prev_ts_ms) / 1000.0 AS dt_s,
        abs(current_a) <= getvariable('rest_c_rate') * c_ah AS at_rest,
        abs(prev_current_a) <= getvariable('rest_c_rate') * c_ah AS prev_at_rest,
        prev_ts_ms IS NULL OR ts_ms <= prev_ts_ms
            OR (ts_ms - prev_ts_ms) > 1000 * getvariable('max_gap_s') AS gap
    FROM lagged
),
counted AS (
    SELECT
        *,
        abs(prev2_current_a) <= getvariable('rest_c_rate') * c_ah AS prev2_at_rest,
        CASE WHEN gap THEN 0::BIGINT
             ELSE round(prev_current_a * dt_s * (1e6 / 3600))::BIGINT
        END AS dq_uah,
        CASE WHEN gap THEN 0::BIGINT
             ELSE round(prev_current_a * prev_voltage_v * dt_s / 3.6)::BIGINT
        END AS de_mwh,
        CASE WHEN gap THEN 0::BIGINT ELSE ts_ms - prev_ts_ms END AS dt_ms,
        -- a gap while driving or charging breaks the charge count (a gap at rest does not)
        gap AND prev_ts_ms IS NOT NULL AND NOT (at_rest AND coalesce(prev_at_rest, FALSE))
            AS bad_gap,
        at_rest IS DISTINCT FROM prev_at_rest
            OR (gap AND NOT (at_rest AND coalesce(prev_at_rest, FALSE))) AS new_run
    FROM intervals
),
-- Running totals over the unit, one window (a second one partitioned by day would sort
-- every row again); the per-day totals subtract what the unit held before the day.
sums AS (
    -- the running totals sort only the columns they need; joined back on (vin, seq)
    SELECT
        vin,
        seq,
        sum(dq_uah) OVER u AS q_unit_uah,
        sum(dt_ms) OVER u AS covered_unit_ms,
        sum(bad_gap::INTEGER) OVER u AS bad_gaps_unit,
        sum(new_run::INTEGER) OVER u AS grun
    FROM counted
    WINDOW u AS (PARTITION BY vin ORDER BY ts_ms, seq ROWS UNBOUNDED PRECEDING)
),
unit_totals AS MATERIALIZED (
    SELECT counted.*, s.q_unit_uah, s.covered_unit_ms, s.bad_gaps_unit, s.grun
    FROM counted
    JOIN sums s USING (vin, seq)
),
day_base AS (
    -- the unit's totals just before each (vehicle, day)'s first reading (lowest rn)
    SELECT
        vin,
        day_n,
        arg_min(q_unit_uah - dq_uah, rn) AS q_base,
        arg_min(covered_unit_ms - dt_ms, rn) AS covered_base,
        arg_min(bad_gaps_unit - bad_gap::INTEGER, rn) AS bad_gaps_base,
        arg_min(grun - new_run::INTEGER, rn) AS run_base
    FROM unit_totals
    GROUP BY vin, day_n
)
SELECT
    t.* EXCLUDE (q_unit_uah, covered_unit_ms, bad_gaps_unit, grun),
    q_unit_uah - q_base AS q_cum_uah,
    covered_unit_ms - covered_base AS covered_cum_ms,
    bad_gaps_unit - bad_gaps_base AS bad_gaps_cum,
    grun - run_base AS run_id,
    grun
FROM unit_totals t
JOIN day_base b USING (vin, day_n);
