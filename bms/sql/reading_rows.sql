-- reading_rows: the unit's readings in (vin, ts, seq) order, one row per (vin, seq) (the
-- first received of duplicates), without the cell and sensor lists: the input of
-- readings.sql when the files do not already hold them so (compaction writes them so).
--
-- Input (registered by bms._analytics): view `tele`. Variable: dedup (false: the unit
-- holds no duplicate (vin, seq); the window is folded away).
SELECT
    vin, seq, ts, current_a, voltage_v, soc_pct, soh_pct, cycle_count, odometer_km, mode,
    n_cells, cell_min_idx, cell_max_idx, temp_c_min, temp_c_max, temp_c_mean, quality,
    -- the reading's valid temperature values (readings.sql: the other sensors' mean)
    list_aggregate(temp_dc, 'count') AS temps_valid
FROM tele
QUALIFY NOT getvariable('dedup')
    OR row_number() OVER (PARTITION BY vin, seq ORDER BY received_at, worker) = 1
ORDER BY vin, ts, seq;
