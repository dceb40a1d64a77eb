-- cell_day: one row per cell and day (day_n), features for the anomaly detector
-- (science.md 3 and 6.7; schema in docs/lake.md). Only the readings chosen by
-- cell_select.sql (held in cell_rows) are unnested; the shares of min_cell_share and
-- max_cell_share come counted (cell_counts.sql).
--   rest_dev_mv        mean of (cell - pack median) at the ends of rests
--   self_discharge_mv_per_day  change of (cell - pack median) over rests, per day
--                      (negative: the cell loses charge faster than its pack)
--   sag_mv             mean of (cell - pack median) under load, minus rest_dev_mv
--   resistance_mohm, resistance_mohm_25c  median of dV_cell / dI over the day's steps,
--                      raw and at the reference temperature (Arrhenius, see
--                      bms._resistance); resistance_dev_pct against the median cell
--   temp_dev_c         mean of (cell's sensor - mean of all sensors); cell i reads
--                      sensor floor(i * n_temps / n_cells)
--   min_cell_share, max_cell_share  share of all the day's readings in which the cell
--                      was the lowest / highest
WITH per_reading AS (
    SELECT vin, seq, day_n, cell_mv, temp_dc, list_median(cell_mv) AS median_mv
    FROM cell_rows
    WHERE for_cells
),
cell_sets AS (
    -- the cells of the chosen readings of each day
    SELECT vin, day_n, unnest(range(n_cells))::SMALLINT AS cell, n_cells
    FROM (SELECT DISTINCT vin, day_n, len(cell_mv) AS n_cells FROM per_reading)
),
sensor_sums AS (
    -- per sensor: the sum of n_temps x (sensor - sensor mean), an integer in 0.1 degC
    -- so that sums stay exact, and of n_temps; summed per sensor (16 a reading), not
    -- per cell (96), then handed to the cells that read that sensor
    SELECT vin, day_n, n_cells, n_temps, sensor, sum(dev_x) AS dev_x, sum(n_temps) AS w
    FROM (
        SELECT
            vin, day_n, len(cell_mv) AS n_cells, len(temp_dc) AS n_temps,
            unnest(range(len(temp_dc))) AS sensor,
            unnest(temp_dc) * len(temp_dc) - list_sum(temp_dc) AS dev_x
        FROM cell_rows
        WHERE for_cells
    )
    GROUP BY vin, day_n, n_cells, n_temps, sensor
),
cell_temps AS (
    -- cell i reads sensor floor(i * n_temps / n_cells)
    SELECT s.vin, s.day_n, c.cell::SMALLINT AS cell, sum(s.dev_x) AS dev_x, sum(s.w) AS w
    FROM sensor_sums s
    JOIN (SELECT unnest(range(400)) AS cell) c
        ON c.cell < s.n_cells AND (c.cell * s.n_temps) // s.n_cells = s.sensor
    GROUP BY s.vin, s.day_n, c.cell
),
roles AS MATERIALIZED (
    -- the readings joined to their roles before the lists are unnested (a reading has
    -- one or two roles; joining its 96 cell rows cost 10 times as much); without the
    -- load readings (most of the rows, up to 64 a day): `load` unnests and averages
    -- them on its own instead of storing them here for every role's scan (this job
    -- 0.08 -> 0.06 s CPU per vehicle group; the averages are of multiples of 0.5 mV,
    -- exact in any order)
    SELECT
        p.vin, p.seq, p.day_n,
        unnest(p.cell_mv)::DOUBLE - p.median_mv AS dev_mv,
        unnest(p.cell_mv)::DOUBLE AS mv,
        unnest(range(len(p.cell_mv)))::SMALLINT AS cell,
        len(p.cell_mv) AS n_cells,
        s.role, s.grp, s.delta_a, s.temp_factor, s.span_ms
    FROM per_reading p
    JOIN cell_select s USING (vin, day_n, seq)
    WHERE s.role <> 'load'
),
rest AS (
    SELECT vin, day_n, cell, avg(dev_mv) AS rest_dev_mv, count(*) AS n_rest
    FROM roles WHERE role = 'rest_end' GROUP BY vin, day_n, cell
),
drift AS (
    SELECT e.vin, e.day_n, e.cell,
           sum(e.dev_mv - s.dev_mv) / sum(s.span_ms) * 8.64e7 AS self_discharge_mv_per_day,
           sum(s.span_ms) / 3.6e6 AS self_discharge_hours
    FROM roles e
    JOIN roles s ON s.vin = e.vin AND s.day_n = e.day_n AND s.grp = e.grp
        AND s.cell = e.cell AND s.role = 'rest_start'
    WHERE e.role = 'rest_end'
    GROUP BY e.vin, e.day_n, e.cell
),
load AS (
    SELECT vin, day_n, cell, avg(dev_mv) AS load_dev_mv, count(*) AS n_load
    FROM (
        SELECT
            p.vin, p.day_n,
            unnest(p.cell_mv)::DOUBLE - p.median_mv AS dev_mv,
            unnest(range(len(p.cell_mv)))::SMALLINT AS cell
        FROM per_reading p
        JOIN cell_select s USING (vin, day_n, seq)
        WHERE s.role = 'load'
    )
    GROUP BY vin, day_n, cell
),
step_cell AS (
    SELECT post.vin, post.day_n, post.cell, post.grp,
           1000.0 * (post.mv - pre.mv) / post.delta_a AS r_mohm,
           1000.0 * (post.mv - pre.mv) / post.delta_a / post.temp_factor AS r_mohm_25c
    FROM roles post
    JOIN roles pre ON pre.vin = post.vin AND pre.grp = post.grp AND pre.cell = post.cell
        AND pre.role = 'step_pre'
    WHERE post.role = 'step_post'
),
step_rel AS (
    SELECT *, median(r_mohm) OVER (PARTITION BY vin, grp) AS r_median_mohm FROM step_cell
),
steps_agg AS (
    SELECT vin, day_n, cell,
           median(r_mohm) AS resistance_mohm,
           median(r_mohm_25c) AS resistance_mohm_25c,
           -- no deviation from a median of 0 (voltage steps below the 1 mV resolution)
           100 * median(r_mohm / nullif(r_median_mohm, 0) - 1) AS resistance_dev_pct,
           count(*) AS n_steps
    FROM step_rel GROUP BY vin, day_n, cell
),
temps AS (
    SELECT c.vin, c.day_n, c.cell, c.n_cells, t.dev_x / t.w / 10.0 AS temp_dev_c
    FROM (SELECT vin, day_n, cell, any_value(n_cells) AS n_cells FROM cell_sets GROUP BY ALL) c
    LEFT JOIN cell_temps t USING (vin, day_n, cell)
),
n_read AS (SELECT DISTINCT vin, day_n, n_readings FROM cell_counts),
counts AS (SELECT vin, day_n, cell, n_min, n_max FROM cell_counts WHERE cell IS NOT NULL)
SELECT
    t.vin,
    t.day_n,
    t.cell,
    t.n_cells::SMALLINT AS n_cells,
    rest.rest_dev_mv,
    coalesce(rest.n_rest, 0) AS n_rest,
    drift.self_discharge_mv_per_day,
    coalesce(drift.self_discharge_hours, 0) AS self_discharge_hours,
    load.load_dev_mv - rest.rest_dev_mv AS sag_mv,
    coalesce(load.n_load, 0) AS n_load,
    steps_agg.resistance_mohm,
    steps_agg.resistance_mohm_25c,
    steps_agg.resistance_dev_pct,
    coalesce(steps_agg.n_steps, 0) AS n_steps,
    t.temp_dev_c,
    coalesce(counts.n_min, 0) / n_read.n_readings AS min_cell_share,
    coalesce(counts.n_max, 0) / n_read.n_readings AS max_cell_share
FROM temps t
LEFT JOIN rest USING (vin, day_n, cell)
LEFT JOIN drift USING (vin, day_n, cell)
LEFT JOIN load USING (vin, day_n, cell)
LEFT JOIN steps_agg USING (vin, day_n, cell)
LEFT JOIN n_read USING (vin, day_n)
LEFT JOIN counts USING (vin, day_n, cell)
ORDER BY t.day_n, t.vin, t.cell;
