-- readings: the deduplicated readings of one or more consecutive dates of a fleet (a
-- "unit"), in time order, with what each interval since the previous reading
-- contributes.
--
-- Inputs (registered by bms._analytics): `reading_rows` = the unit's readings in
-- (vin, ts, seq) order, one row per (vin, seq): a compacted partition's file as it is,
-- otherwise the output of reading_rows.sql, either with `temps_valid` (the count of the
-- reading's valid temperature values); `vin_order` (vin, k: its VINs in the order
-- their rows come); tables `registry` (vin, chemistry, capacity_ah, n_cells, ...) and
-- `carry` (each vehicle's last reading before the unit's first date). Variables:
-- rest_c_rate, max_gap_s, default_capacity_ah.
--
-- The rows' order does all the sequencing: the previous readings, the running totals
-- and their bases come from streaming window passes (an empty OVER (), or a frame from
-- the first row), which DuckDB runs on one thread in the input's order: no sort, no
-- join back, and the table is written straight from the pass.
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
--
-- The registry's and the carry's values, one struct per vehicle in the order the
-- vehicles' rows come (`vin_order`: vin, k = 1, 2, ...), looked up by position in the
-- streaming pass (a join there could reorder the rows).
--
-- `vin` is stored as the ENUM `vin_key` (the group's VINs in VARCHAR order, a temporary
-- type bms._analytics creates per group): the table holds a one- or two-byte key instead
-- of a 17-character string, and the jobs that group, join or sort by vin hash and compare
-- integers (readings and the jobs reading it: about 12 % less CPU). Sorting by it is
-- sorting by the string; bms._analytics turns the jobs' outputs back into strings.
SET VARIABLE vin_info = (
    SELECT list(
        {
            'chemistry': r.chemistry,
            'rated_capacity_ah': r.capacity_ah,
            'c_ah': coalesce(r.capacity_ah, getvariable('default_capacity_ah')),
            'last_ts_ms': c.last_ts_ms,
            'last_current_a': c.last_current_a,
            'last_voltage_v': c.last_voltage_v,
            'last_soc_pct': c.last_soc_pct,
            'last_temp_c_max': c.last_temp_c_max,
            'last_mode': c.last_mode,
            'last_odometer_km': c.last_odometer_km
        }
        ORDER BY u.k
    )
    FROM vin_order u
    LEFT JOIN registry r USING (vin)
    LEFT JOIN carry c USING (vin)
);
CREATE OR REPLACE TEMP TABLE readings AS
WITH rows_raw AS (
    SELECT
        vin::vin_key AS vin, seq, epoch_ms(ts) AS ts_ms, epoch_ms(ts) // 86400000 AS day_n,
        current_a::DOUBLE AS current_a, voltage_v::DOUBLE AS voltage_v,
        soc_pct::DOUBLE AS soc_pct, soh_pct::DOUBLE AS soh_pct, cycle_count, odometer_km,
        mode, n_cells, cell_min_idx, cell_max_idx,
        temp_c_min::DOUBLE AS temp_c_min, temp_c_max::DOUBLE AS temp_c_max,
        temp_c_mean::DOUBLE AS temp_c_mean, quality, temps_valid,
        -- the mean of the other sensors than the hottest, from the reading's own
        -- sensors: min, max and mean are over its valid values (temps_valid of them;
        -- a sentinel or unrepresentable value is stored as null and left out)
        CASE WHEN temps_valid >= 2 THEN
            (temps_valid * temp_c_mean::DOUBLE - temp_c_max::DOUBLE) / (temps_valid - 1)
        END AS temp_c_others
    FROM reading_rows
),
rows_in AS (
    -- pack_temp_c: the pack's hottest temperature, for the time per temperature band and
    -- the calendar exposure of vehicle_day: the hottest sensor, unless it reads more than
    -- over_temp_spread_c above the mean of the others (three sensors at least), which a
    -- pack heated by its use does not show: then a failing or misplaced sensor (or a
    -- local defect the anomalies report) and the others' mean stands for the pack, as
    -- for the over-temperature events (vehicle_day.sql).
    SELECT
        * EXCLUDE (temp_c_others, temps_valid),
        -- temp_c_mean is a float32: the others' mean from it may miss their range by a
        -- rounding error (others all at the minimum), so the range is checked within
        -- half a step of the stored 0.1 degC and the mean kept inside it
        CASE
            WHEN temps_valid >= 3
                AND temp_c_others BETWEEN temp_c_min - 0.05 AND temp_c_max + 0.05
                AND temp_c_max - temp_c_others > getvariable('over_temp_spread_c')
            THEN least(greatest(temp_c_others, temp_c_min), temp_c_max)
            ELSE temp_c_max
        END AS pack_temp_c
    FROM rows_raw
),
lagged_raw AS (
    -- Window functions with an empty OVER () (and running sums from the first row) run
    -- as streaming passes over the rows in their input order (DuckDB runs such a
    -- pipeline on one thread, in order): no sort. The input is in (vin, ts, seq) order,
    -- so the previous row is the vehicle's previous reading unless the VIN changed
    -- (then the carried one is taken below).
    SELECT
        d.*,
        row_number() OVER () AS rn,
        lag(vin) OVER () IS DISTINCT FROM vin AS vin_first,
        lag(vin, 2) OVER () IS DISTINCT FROM vin AS vin_first2,
        lag(day_n) OVER () AS l_day_n,
        lag(seq) OVER () AS lag_seq,
        lag(ts_ms) OVER () AS l_ts_ms,
        lag(current_a) OVER () AS l_current_a,
        lag(voltage_v) OVER () AS l_voltage_v,
        lag(soc_pct) OVER () AS l_soc_pct,
        lag(temp_c_max) OVER () AS l_temp_c_max,
        lag(mode) OVER () AS l_mode,
        lag(odometer_km) OVER () AS l_odometer_km,
        lag(current_a, 2) OVER () AS l2_current_a
    FROM rows_in d
),
with_info AS (
    -- the k-th vehicle of the rows: its registry and carry values
    SELECT
        *,
        getvariable('vin_info')[count(*) FILTER (WHERE vin_first) OVER u] AS info
    FROM lagged_raw
    WINDOW u AS (ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
lagged AS (
    -- before the vehicle's first reading of the unit (two back: its first two) the
    -- carried one
    SELECT
        l.* EXCLUDE (
            info, vin_first2, l_day_n, lag_seq, l_ts_ms, l_current_a,
            l_voltage_v, l_soc_pct, l_temp_c_max, l_mode, l_odometer_km, l2_current_a
        ),
        info.chemistry,
        info.rated_capacity_ah,
        info.c_ah,
        l.vin_first OR l.l_day_n IS DISTINCT FROM l.day_n AS day_first,
        l.lag_seq,
        CASE WHEN l.vin_first THEN info.last_ts_ms ELSE l.l_ts_ms END AS prev_ts_ms,
        CASE WHEN l.vin_first THEN info.last_current_a ELSE l.l_current_a END
            AS prev_current_a,
        CASE WHEN l.vin_first THEN info.last_voltage_v ELSE l.l_voltage_v END
            AS prev_voltage_v,
        CASE WHEN l.vin_first THEN info.last_soc_pct ELSE l.l_soc_pct END AS prev_soc_pct,
        CASE WHEN l.vin_first THEN info.last_temp_c_max ELSE l.l_temp_c_max END
            AS prev_temp_c_max,
        CASE WHEN l.vin_first THEN info.last_mode ELSE l.l_mode END AS prev_mode,
        CASE WHEN l.vin_first THEN info.last_odometer_km ELSE l.l_odometer_km END
            AS prev_odometer_km,
        CASE WHEN l.vin_first2 THEN info.last_current_a ELSE l.l2_current_a END
            AS lag2_current_a
    FROM with_info l
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
-- Running totals over the unit: cumulative sums over all rows in input order (BIGINT:
-- a sum's HUGEINT takes twice the memory and time in the table and the jobs that read
-- it, and reaches Python as Decimal objects; the flags, never NULL, are counted: a
-- count is a BIGINT without the HUGEINT sum, this pass 15 % cheaper); each
-- (vehicle, day) subtracts what had been summed before its first reading, and each
-- vehicle's run count what had been counted before its first reading in the unit (the
-- latest such base, carried forward: streaming passes too).
unit_totals AS (
    SELECT
        *,
        (sum(dq_uah) OVER u)::BIGINT AS q_unit_uah,
        (sum(dt_ms) OVER u)::BIGINT AS covered_unit_ms,
        count(*) FILTER (WHERE bad_gap) OVER u AS bad_gaps_unit,
        count(*) FILTER (WHERE new_run) OVER u AS runs_unit
    FROM counted
    WINDOW u AS (ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
bases AS (
    -- the value at the latest first reading of the day (of the vehicle); the terms are
    -- never NULL (ts, current and voltage are required by the contract)
    SELECT
        *,
        arg_max(q_unit_uah - dq_uah, rn) FILTER (WHERE day_first) OVER u AS q_base,
        arg_max(covered_unit_ms - dt_ms, rn) FILTER (WHERE day_first) OVER u AS covered_base,
        arg_max(bad_gaps_unit - bad_gap::INTEGER, rn) FILTER (WHERE day_first) OVER u
            AS bad_gaps_base,
        arg_max(runs_unit - new_run::INTEGER, rn) FILTER (WHERE day_first) OVER u
            AS run_base,
        arg_max(runs_unit - new_run::INTEGER, rn) FILTER (WHERE vin_first) OVER u
            AS grun_base
    FROM unit_totals
    WINDOW u AS (ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT
    * EXCLUDE (
        vin_first, day_first, prev2_current_a, new_run, q_unit_uah, covered_unit_ms,
        bad_gaps_unit, runs_unit, q_base, covered_base, bad_gaps_base, run_base, grun_base
    ),
    -- where the LFP hysteresis bookkeeping restarts or turns (branch_turns.sql): a gap
    -- that broke the charge count, or a reading entering a charge or discharge mode
    bad_gap OR (
        mode IN ('ac_charge', 'dc_charge', 'drive', 'v2g') AND mode IS DISTINCT FROM prev_mode
    ) AS branch_turn,
    q_unit_uah - q_base AS q_cum_uah,
    covered_unit_ms - covered_base AS covered_cum_ms,
    bad_gaps_unit - bad_gaps_base AS bad_gaps_cum,
    runs_unit - run_base AS run_id,
    runs_unit - grun_base AS grun
FROM bases;
