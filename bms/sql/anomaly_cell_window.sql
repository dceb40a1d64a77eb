-- anomaly_cell_window: per (vin, cell), the analytics' cell_day rows of a trailing window
-- condensed into the anomaly detector's per-cell inputs (schema of cell_day in
-- docs/lake.md). Inputs: view `cell_day` (the window's partitions, with a `date`
-- column); variables day_num (the scored date as days since 1970-01-01), smooth_days,
-- trend_days.
--   self_discharge_mv_per_day  rest-hour-weighted mean over the last smooth_days
--   rest_dev_mv                mean rest deviation from the pack median, last smooth_days
--   rest_dev_early_mv          the same over the first smooth_days of the trend window
--   rest_dev_trend_mv_per_day  least-squares slope of rest_dev_mv over trend_days
--   sag_mv                     load-reading-weighted mean sag (relative to the pack)
--   resistance_dev_pct         median over the last smooth_days
--   resistance_steps           current steps behind it (one step of a few mV is coarse)
--   temp_dev_c                 mean over the last smooth_days
--   min_cell_share             mean share of readings the cell was the pack's lowest
WITH w AS (
    SELECT *, date_diff('day', DATE '1970-01-01', date) AS d
    FROM cell_day
    WHERE date_diff('day', DATE '1970-01-01', date)
        BETWEEN getvariable('day_num') - getvariable('trend_days') + 1 AND getvariable('day_num')
),
recent AS (SELECT *, d > getvariable('day_num') - getvariable('smooth_days') AS is_recent FROM w)
SELECT
    vin,
    cell,
    max(n_cells) AS n_cells,
    bool_or(d = getvariable('day_num')) AS has_today,
    sum(self_discharge_mv_per_day * self_discharge_hours)
        FILTER (WHERE is_recent AND self_discharge_hours > 0)
        / nullif(sum(self_discharge_hours) FILTER (WHERE is_recent AND self_discharge_hours > 0), 0)
        AS self_discharge_mv_per_day,
    coalesce(sum(self_discharge_hours) FILTER (WHERE is_recent AND self_discharge_hours > 0), 0)
        AS self_discharge_hours,
    avg(rest_dev_mv) FILTER (WHERE is_recent AND n_rest > 0) AS rest_dev_mv,
    avg(rest_dev_mv) FILTER (
        WHERE n_rest > 0
            AND d <= getvariable('day_num') - getvariable('trend_days') + getvariable('smooth_days')
    ) AS rest_dev_early_mv,
    CASE WHEN count(DISTINCT d) FILTER (WHERE n_rest > 0) >= 5
        THEN regr_slope(rest_dev_mv, d) FILTER (WHERE n_rest > 0) END
        AS rest_dev_trend_mv_per_day,
    count(DISTINCT d) FILTER (WHERE n_rest > 0) AS rest_days,
    sum(sag_mv * n_load) FILTER (WHERE is_recent AND n_load > 0)
        / nullif(sum(n_load) FILTER (WHERE is_recent AND n_load > 0), 0) AS sag_mv,
    median(resistance_dev_pct) FILTER (WHERE is_recent AND n_steps > 0) AS resistance_dev_pct,
    coalesce(sum(n_steps) FILTER (WHERE is_recent AND n_steps > 0), 0) AS resistance_steps,
    avg(temp_dev_c) FILTER (WHERE is_recent) AS temp_dev_c,
    avg(min_cell_share) FILTER (WHERE is_recent) AS min_cell_share
FROM recent
GROUP BY vin, cell
ORDER BY vin, cell;
