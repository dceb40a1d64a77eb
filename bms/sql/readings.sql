-- readings: the deduplicated readings of one (date, fleet) partition, in time order,
-- with what each interval since the previous reading contributes.
--
-- Inputs (registered by bms._analytics): view `tele` = the partition's Parquet files
-- (several small files and duplicate (vin, seq) rows before nightly compaction),
-- tables `registry` (vin, chemistry, capacity_ah, n_cells, ...) and `carry` (each
-- vehicle's last reading of an earlier day). Variables: rest_c_rate, max_gap_s,
-- default_capacity_ah.
--
-- The interval (previous reading, this reading] belongs to this reading; the first
-- reading of the day continues from the carried last reading, so charge counts and
-- rest periods run across midnight. A reading's current and voltage hold until the next
-- reading (sample and hold: a BMS reports the value it then keeps; Plett 2015 ch. 3 for
-- coulomb counting). Charge [uAh] and energy [mWh] are integers so that sums are exact
-- whatever the thread order.
CREATE OR REPLACE TEMP TABLE readings AS
WITH dedup AS (
    SELECT
        vin, seq, epoch_ms(ts) AS ts_ms,
        current_a::DOUBLE AS current_a, voltage_v::DOUBLE AS voltage_v,
        soc_pct::DOUBLE AS soc_pct, soh_pct::DOUBLE AS soh_pct, cycle_count, odometer_km,
        mode, n_cells, cell_min_idx, cell_max_idx,
        temp_c_min::DOUBLE AS temp_c_min, temp_c_max::DOUBLE AS temp_c_max,
        temp_c_mean::DOUBLE AS temp_c_mean, quality
    FROM tele
    QUALIFY row_number() OVER (PARTITION BY vin, seq ORDER BY received_at, worker) = 1
),
lagged AS (
    SELECT
        d.*,
        reg.chemistry,
        reg.capacity_ah AS rated_capacity_ah,
        coalesce(reg.capacity_ah, getvariable('default_capacity_ah')) AS c_ah,
        lag(seq) OVER w AS prev_seq,
        lag(ts_ms, 1, c.last_ts_ms) OVER w AS prev_ts_ms,
        lag(current_a, 1, c.last_current_a) OVER w AS prev_current_a,
        lag(voltage_v, 1, c.last_voltage_v) OVER w AS prev_voltage_v,
        lag(soc_pct, 1, c.last_soc_pct) OVER w AS prev_soc_pct,
        lag(temp_c_max, 1, c.last_temp_c_max) OVER w AS prev_temp_c_max,
        lag(mode, 1, c.last_mode) OVER w AS prev_mode,
        -- two readings back; for the day's second reading that is the carried one
        lag(current_a, 2, c.last_current_a) OVER w AS prev2_current_a
    FROM dedup d
    LEFT JOIN registry reg USING (vin)
    LEFT JOIN carry c USING (vin)
    WINDOW w AS (PARTITION BY d.vin ORDER BY d.ts_ms, d.seq)
),
intervals AS (
    SELECT
        *,
        (ts_ms - prev_ts_ms) / 1000.0 AS dt_s,
        abs(current_a) <= getvariable('rest_c_rate') * c_ah AS at_rest,
        abs(prev_current_a) <= getvariable('rest_c_rate') * c_ah AS prev_at_rest,
        abs(prev2_current_a) <= getvariable('rest_c_rate') * c_ah AS prev2_at_rest,
        prev_ts_ms IS NULL OR ts_ms <= prev_ts_ms
            OR (ts_ms - prev_ts_ms) > 1000 * getvariable('max_gap_s') AS gap
    FROM lagged
),
counted AS (
    SELECT
        *,
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
)
SELECT
    *,
    sum(dq_uah) OVER w AS q_cum_uah,
    sum(dt_ms) OVER w AS covered_cum_ms,
    sum(bad_gap::INTEGER) OVER w AS bad_gaps_cum,
    sum(new_run::INTEGER) OVER w AS run_id
FROM counted
WINDOW w AS (PARTITION BY vin ORDER BY ts_ms, seq ROWS UNBOUNDED PRECEDING);
